"""Rater agreement: Krippendorff's alpha, interval and nominal metrics, with missing values.

Written here rather than imported: the `krippendorff` package is GPL-3.0, which this Apache-2.0 project
does not take in. The computation follows Krippendorff's "Computing Krippendorff's Alpha-Reliability"
(2011) through the coincidence matrix:

    o_ck = sum over units u of (number of ordered pairs of values (c, k) from different coders in u) / (m_u - 1)
    n_c  = sum_k o_ck,  n = sum_c n_c                      (only units with m_u >= 2 values are pairable)
    D_o  = sum_ck o_ck delta2_ck / n                       observed disagreement
    D_e  = sum_ck n_c n_k delta2_ck / (n (n - 1))          disagreement expected by chance
    alpha = 1 - D_o / D_e

with delta2_ck = (c - k)^2 for the interval metric and [c != k] for the nominal one. The tests check
the paper's worked example (4 observers, 12 units, missing values): nominal 0.743, interval 0.849.

In a study a unit is one (item, condition) of a test and the coders are the raters; for pairwise
studies a unit is one (item, pair of conditions) and the value +1 / 0 / -1 (first chosen / unsure /
second chosen), on the interval metric so that "unsure" lies between the two choices.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

METRICS = ("interval", "nominal")


def _delta2(values: np.ndarray, metric: str) -> np.ndarray:
    if metric == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if metric == "nominal":
        return (values[:, None] != values[None, :]).astype(float)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def alpha_of_values(unit: ArrayLike, value: ArrayLike, metric: str = "interval") -> float:
    """Alpha from long-form data: one entry per coder's value, `unit[j]` the unit that value belongs to.

    NaN when no unit has two values or when every pairable value is the same (no variation to agree on).
    """
    unit = np.asarray(unit)
    value = np.asarray(value, dtype=float)
    keep = np.isfinite(value)
    unit, value = unit[keep], value[keep]
    if len(value) == 0:
        return math.nan
    _, unit_index = np.unique(unit, return_inverse=True)
    levels, value_index = np.unique(value, return_inverse=True)
    counts = np.zeros((unit_index.max() + 1, len(levels)))  # [U, V] values of each level per unit
    np.add.at(counts, (unit_index, value_index), 1)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if len(m) == 0:
        return math.nan
    scaled = counts / (m - 1)[:, None]
    coincidence = scaled.T @ counts - np.diag(scaled.sum(axis=0))  # [V, V], pairs of values within units
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    delta2 = _delta2(levels, metric)
    expected = (np.outer(n_c, n_c) * delta2).sum() / (n * (n - 1))
    if expected == 0:
        return math.nan
    observed = (coincidence * delta2).sum() / n
    return float(1 - observed / expected)


def krippendorff_alpha(reliability_data: ArrayLike, metric: str = "interval") -> float:
    """Alpha of a coders x units matrix, NaN where a coder gave no value (the paper's layout)."""
    data = np.asarray(reliability_data, dtype=float)  # [coders, units]
    units = np.broadcast_to(np.arange(data.shape[1])[None, :], data.shape)
    return alpha_of_values(units.ravel(), data.ravel(), metric)
