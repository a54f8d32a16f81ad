"""A VLM hallucination judge as an evaluation metric: `hallucination` per method and zoom scale, lower is better.

For each result (method) and zoom scale of each eval image, a judge VLM is shown two images, the wider view the
output was zoomed from and the zoomed output (`pairs.py`: state k-1 for the CoZ chains, the start for `onestep`,
`nearest` and `bicubic`), and asked one fixed question (`eval.judge.instruction`, default in
`coz_train.config.JudgeConfig`): does the second image hold content the first does not support? Answer 1 if so,
0 if not. The answer becomes a score in [0, 1] (1 = hallucinating): the first number of the answer divided by
`eval.judge.score_max` (`scoring: generate`, a rate over images once averaged), or the expected answer over the
tokens "0" and "1" (`scoring: logits`, the judge's probability of "1"). An answer without a number in range is
None, stored as NaN: an abstention, left out of the table's mean and its n, counted and logged; a batch without
any usable answer, or with a NaN one, is a `CriticScoringError`; an unreachable judge server a
`CriticUnavailableError` (never a 0).

The judge runs through the critic's backends (`coz_train.rewards.critic.load_critic_backend`): `hf` (transformers,
in this process), `internvl_remote` (InternVL through its remote code, transformers 4.x) and `server` (an
OpenAI-compatible endpoint: vLLM, or `python -m coz_train.critic_server`), so a 38B judge runs on GPUs of its own.
Pairs go to it in batches of `eval.judge.batch_size`; each answer is cached (`cache.py`) by the judge's settings
and the two images' pixels, so a rerun or a re-judging of the same chains asks the model nothing.

- During an evaluation (`coz_train.eval.run.evaluate_images`): `python -m coz_train.eval +experiment=... eval/judge=internvl3_5_38b`.
- On a finished run folder: `python -m coz_train.eval.judge <run> eval/judge=<preset>` (`run_folder.py`).

The protocol, its reference (OracleZoom, whose judge code and question are not public) and the differences:
docs/judge.md.
"""

from coz_train.eval.judge.cache import JudgeCache, answer_settings, image_digest
from coz_train.eval.judge.checks import check_judge, judge_enabled
from coz_train.eval.judge.hallucination import HallucinationJudge, judged, load_judge
from coz_train.eval.judge.pairs import METRIC, JudgePair, judge_pairs, wider_index

__all__ = [
    "METRIC",
    "HallucinationJudge",
    "JudgeCache",
    "JudgePair",
    "answer_settings",
    "check_judge",
    "image_digest",
    "judge_enabled",
    "judge_pairs",
    "judged",
    "load_judge",
    "wider_index",
]
