"""Simulated studies with a known truth: for the tests of the analysis and for sizing a real study.

MOS model (one test): the latent opinion of rater r on item i under condition c is
    mean[c] + bias_r + effect_i + noise,   bias_r ~ N(0, rater_sd), effect_i ~ N(0, item_sd), noise ~ N(0, noise_sd)
and the answer is that rounded to the nearest integer and clipped to 1..5. The true MOS of a condition is
the population mean of the answer over new raters, items and noise: the latent is N(mean[c], s) with
s^2 = rater_sd^2 + item_sd^2 + noise_sd^2, and E[answer] = 1 + sum_{k=1..4} P(latent >= k + 1/2)
(`ScoreModel.true_mos`), which is not mean[c] once the clipping bites.

Pairwise model: rater r prefers condition a over b on item i with probability
sigmoid(strength[a] - strength[b] + effect_ia - effect_ib), effect ~ N(0, item_sd), and answers "unsure"
with probability `unsure` whatever the strengths.

Careless raters (`careless`, rater id -> kind): "random" answers uniformly at random everywhere,
"control" answers honestly but gives the degraded control 5, "repeat" answers honestly but its repeats
land at the other end of the scale, "fast" answers honestly in 0.2-0.6 s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

from coz_train.study.ratings import SCALE, Rating

CONTROL = "nearest"   # the degraded control's condition
CONTROL_MEAN = 1.0    # its latent mean: Bad


@dataclass(frozen=True)
class ScoreModel:
    means: dict[str, float]          # latent mean per condition, display order
    rater_sd: float = 0.4
    item_sd: float = 0.5
    noise_sd: float = 0.7

    @property
    def total_sd(self) -> float:
        return float(np.sqrt(self.rater_sd**2 + self.item_sd**2 + self.noise_sd**2))

    def true_mos(self) -> dict[str, float]:
        thresholds = np.arange(SCALE[0], SCALE[1]) + 0.5  # 1.5 .. 4.5
        return {c: float(SCALE[0] + stats.norm.sf(thresholds, loc=m, scale=self.total_sd).sum())
                for c, m in self.means.items()}


def answer(latent: np.ndarray | float) -> np.ndarray:
    return np.clip(np.rint(latent), SCALE[0], SCALE[1]).astype(int)


def _seconds(rng: np.random.Generator, kind: str) -> float:
    return float(rng.uniform(0.2, 0.6) if kind == "fast" else rng.lognormal(np.log(4.0), 0.4))


def simulate_mos(model: ScoreModel, n_raters: int, n_items: int, rng: np.random.Generator, test: str = "image",
                 careless: dict[str, str] | None = None, n_repeats: int = 2, n_controls: int = 2) -> list[Rating]:
    """Every rater rates every item under every condition, plus `n_repeats` repeats and `n_controls` controls."""
    careless = careless or {}
    raters = [f"r{k:02d}" for k in range(n_raters - len(careless))] + list(careless)
    effect = rng.normal(0, model.item_sd, n_items)
    items = [f"{k:04d}@16x" for k in range(n_items)]
    out: list[Rating] = []
    for rater in raters:
        kind = careless.get(rater, "")
        bias = rng.normal(0, model.rater_sd)
        tasks = []
        for (i, item), condition in itertools.product(enumerate(items), model.means):
            latent = model.means[condition] + bias + effect[i] + rng.normal(0, model.noise_sd)
            score = int(rng.integers(1, 6)) if kind == "random" else int(answer(latent))
            tasks.append(Rating(rater=rater, task=f"{rater}-{test}-{len(tasks)}", test=test, kind="mos", item=item,
                                scale=16, condition=condition, score=score, seconds=_seconds(rng, kind)))
        for first in rng.choice(len(tasks), size=min(n_repeats, len(tasks)), replace=False):
            shown = tasks[first]
            i = items.index(shown.item)
            if kind == "random":
                score = int(rng.integers(1, 6))
            elif kind == "repeat":
                score = 5 if shown.score <= 3 else 1
            else:
                score = int(answer(model.means[shown.condition] + bias + effect[i] + rng.normal(0, model.noise_sd)))
            tasks.append(Rating(rater=rater, task=f"{rater}-{test}-{len(tasks)}", test=test, kind="mos",
                                item=shown.item, scale=16, condition=shown.condition, score=score, check="repeat",
                                repeat_of=shown.task, seconds=_seconds(rng, kind)))
        for k in range(n_controls):
            latent = CONTROL_MEAN + bias + rng.normal(0, model.noise_sd)
            score = {"random": int(rng.integers(1, 6)), "control": 5}.get(kind, int(answer(latent)))
            tasks.append(Rating(rater=rater, task=f"{rater}-{test}-{len(tasks)}", test=test, kind="mos",
                                item=items[k % n_items], scale=256, condition=CONTROL, score=score, check="control",
                                seconds=_seconds(rng, kind)))
        order = rng.permutation(len(tasks))
        out.extend(tasks[j] for j in order)
    return out


def simulate_pairs(strengths: dict[str, float], n_raters: int, n_items: int, rng: np.random.Generator,
                   test: str = "image", unsure: float = 0.0, item_sd: float = 0.3) -> list[Rating]:
    """Every rater compares every pair of conditions on every item, sides at random."""
    names = list(strengths)
    effect = rng.normal(0, item_sd, (n_items, len(names)))
    out = []
    for r in range(n_raters):
        rater = f"r{r:02d}"
        for i, (a, b) in itertools.product(range(n_items), itertools.combinations(range(len(names)), 2)):
            p = 1 / (1 + np.exp(-(strengths[names[a]] - strengths[names[b]] + effect[i, a] - effect[i, b])))
            winner = a if rng.random() < p else b
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            choice = "unsure" if rng.random() < unsure else ("left" if winner == left else "right")
            out.append(Rating(rater=rater, task=f"{rater}-{test}-{len(out)}", test=test, kind="pair",
                              item=f"{i:04d}@16x", scale=16, condition_left=names[left], condition_right=names[right],
                              choice=choice, seconds=float(rng.lognormal(np.log(4.0), 0.4))))
    return out
