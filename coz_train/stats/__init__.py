"""The statistics the human study and the eval comparison share; below both, importing nothing of the package.

- bootstrap.py: one-way and two-way (crossed) bootstrap weights, percentile intervals, the interval of a mean
- significance.py: the Wilcoxon signed-rank test (exact up to 16 units), the Holm correction, star levels
- bradley_terry.py: Bradley-Terry scores from win counts, many win matrices at once
- agreement.py: Krippendorff's alpha (interval and nominal metrics, missing values)

Users: `coz_train.study.analysis` (MOS, pairwise scores, rater agreement) and `coz_train.eval.compare`
(paired per-image differences between eval runs).
"""
