"""The study's statistics: `analyze` the ratings, `write_results` to a folder, `log_to_wandb`.

    python -m coz_train.study analyze <study>

    from coz_train.study.analysis import analyze, write_results, log_to_wandb
    results = analyze(ratings, conditions=["Single", "Multiple", "GRPO"])
    write_results(results, study / "analysis", ratings)

Per test (image MOS, text MOS): the MOS per condition with 95% intervals from a two-way bootstrap over
raters and items and the SD of the ratings (mos.py); paired comparisons of every two conditions, Wilcoxon
signed-rank on per-rater differences, Holm-corrected, with star levels (significance.py); Krippendorff's
alpha, interval metric; for pairwise studies Bradley-Terry scores with bootstrap intervals and the win-rate
matrix, "unsure" a tie (pairwise.py). The statistics themselves (the bootstraps, the signed-rank test, Holm,
Bradley-Terry, Krippendorff's alpha) live in `coz_train.stats`, shared with the eval comparison.
Raters are screened by the hidden repeats and controls, their answer times and their agreement with
the others (screening.py); the analysis is done with and without the flagged raters and `drop_flagged`
picks which one is the result (results.py). Hidden checks never count towards a statistic.
`simulate.py` makes studies with a known truth (the tests; sizing a study).
"""

from coz_train.study.analysis.report import write_results
from coz_train.study.analysis.results import Results, TestResult, analyze
from coz_train.study.analysis.screening import ScreeningRules
from coz_train.study.analysis.to_wandb import log_to_wandb

__all__ = ["Results", "ScreeningRules", "TestResult", "analyze", "log_to_wandb", "write_results"]
