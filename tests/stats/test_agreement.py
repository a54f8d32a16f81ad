"""Krippendorff's alpha against the published worked example and hand-made extremes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coz_train.stats.agreement import alpha_of_values, krippendorff_alpha

N = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with multiple observers
# and missing values: observers A-D (rows) x units 1-12 (columns).
PUBLISHED = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def test_published_example_nominal_and_interval() -> None:
    assert round(krippendorff_alpha(PUBLISHED, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(PUBLISHED, "interval"), 3) == 0.849


def test_long_form_matches_matrix_and_coders_order_does_not_matter() -> None:
    data = np.array(PUBLISHED)
    units = np.broadcast_to(np.arange(12), data.shape).ravel()
    assert alpha_of_values(units, data.ravel()) == pytest.approx(krippendorff_alpha(data))
    assert krippendorff_alpha(data[::-1]) == pytest.approx(krippendorff_alpha(data))


def test_extremes() -> None:
    perfect = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, N, 5]]
    assert krippendorff_alpha(perfect) == pytest.approx(1.0)
    # coders that systematically disagree as much as possible: alpha below zero
    assert krippendorff_alpha([[1, 5, 1, 5], [5, 1, 5, 1]]) < 0
    # a unit with a single value is not pairable, and no variation at all leaves alpha undefined
    assert math.isnan(krippendorff_alpha([[3, 3, 3], [3, 3, N]]))
    assert math.isnan(krippendorff_alpha([[1, N], [N, 2]]))


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="metric"):
        krippendorff_alpha(PUBLISHED, "ordinal")
