"""Bootstrap resampling as multiplicity weights: one-way (units drawn with replacement) and two-way (crossed).

One-way (`resample_weights`): each replicate draws the n units with replacement; a unit drawn k times
gets weight k. The eval comparison (`coz_train.eval.compare`) resamples its images this way: the
images are the sample, a replication would evaluate other images.

Two-way (`crossed_weights`): a human study's ratings vary with who rated and with what was rated, and
both are samples: a replication would invite other raters and show other images. Each replicate
  1. draws the raters with replacement (R of R),
  2. draws the items with replacement (I of I), independently of 1.,
  3. keeps the ratings in the crossing, each one as often as its rater was drawn times as often as its
     item was drawn (a rater drawn twice and an item drawn three times give six copies of that rating).
This is the "pigeonhole" bootstrap of Owen (2007, Annals of Applied Statistics 1(2)) for crossed random
effects. For a score model rater + item + noise it counts the noise term up to three times (a little
conservative), while the percentile interval of a few raters and items falls a little short; in the
simulations of the study's tests (12-25 raters, 10-20 items, the paper's MOS levels) the 95% intervals
covered the true MOS 93-94% of the time. Resampling ratings alone, or raters alone, ignores the item (or
rater) variance: in the same simulations those intervals covered 59% and 73%. For pairwise answers, where
the binary noise dominates, the overcounting makes the intervals noticeably wider than needed.

Intervals are percentile intervals of the replicates; a replicate in which a statistic is undefined (no
rating of a condition was drawn) is left out of that statistic's interval. Replicates are drawn in chunks
so that memory stays at about `CHUNK_ELEMENTS` floats whatever the sample size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

CHUNK_ELEMENTS = 4_000_000  # floats per chunk of [replicates, units] weights (32 MB)
LEVEL = 0.95


def _chunks(n: int, n_boot: int) -> Iterator[int]:
    """Replicates per chunk, n_boot in all, each chunk about CHUNK_ELEMENTS weights of n units."""
    chunk = max(1, min(n_boot, CHUNK_ELEMENTS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield b
        done += b


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yields [b, n] multiplicity weights of n units drawn with replacement, b replicates at a time, n_boot in all.

    Each row sums to n: `weights @ values / n` is the replicate's mean."""
    for b in _chunks(n, n_boot):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # [b, n]


def crossed_weights(rater: np.ndarray, item: np.ndarray, n_raters: int, n_items: int, n_boot: int,
                    rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yields [b, N] two-way multiplicity weights of the N ratings (`rater[j]`, `item[j]`: the indices of
    rating j), b replicates at a time, n_boot in all."""
    for b in _chunks(len(rater), n_boot):
        raters = rng.multinomial(n_raters, np.full(n_raters, 1.0 / n_raters), size=b)  # [b, R]
        items = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=b)      # [b, I]
        yield (raters[:, rater] * items[:, item]).astype(np.float64)                   # [b, N]


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds along axis 0, ignoring undefined (NaN) replicates."""
    tail = 100 * (1 - level) / 2
    if replicates.shape[0] == 0:
        return np.full(replicates.shape[1:], np.nan), np.full(replicates.shape[1:], np.nan)
    with warnings.catch_warnings():  # a statistic undefined in every replicate is NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(replicates, [tail, 100 - tail], axis=0)
    return low, high


def mean_interval(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                  level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of the mean of `values` (one value per unit) under one-way resampling of the units;
    NaN, NaN for no values."""
    values = np.asarray(values, dtype=float)  # [n]
    if len(values) == 0:
        return float("nan"), float("nan")
    means = np.concatenate([w @ values / len(values) for w in resample_weights(len(values), n_boot, rng)])  # [n_boot]
    low, high = percentile_interval(means[:, None], level)
    return float(low[0]), float(high[0])
