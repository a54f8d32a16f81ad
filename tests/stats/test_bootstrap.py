"""The bootstrap weights and intervals: what a replicate holds, reproducibility, coverage of a mean's interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

import coz_train.stats.bootstrap as bootstrap
from coz_train.stats.bootstrap import crossed_weights, mean_interval, percentile_interval, resample_weights


def test_one_way_replicates_draw_every_unit_with_replacement() -> None:
    chunks = list(resample_weights(7, 50, np.random.default_rng(0)))
    weights = np.concatenate(chunks)  # [50, 7]
    assert weights.shape == (50, 7) and np.all(weights.sum(axis=1) == 7) and np.all(weights >= 0)
    assert np.any(weights == 0) and np.any(weights >= 2)  # some units left out, some drawn twice
    again = np.concatenate(list(resample_weights(7, 50, np.random.default_rng(0))))
    assert np.array_equal(weights, again)


def test_one_way_chunks_keep_the_memory_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 70)
    shapes = [w.shape for w in resample_weights(7, 25, np.random.default_rng(1))]
    assert shapes == [(10, 7), (10, 7), (5, 7)]


def test_crossed_weights_are_rater_count_times_item_count() -> None:
    rater = np.array([0, 0, 1, 1, 2, 2])  # 3 raters x 2 items, one rating per cell
    item = np.array([0, 1, 0, 1, 0, 1])
    for w in crossed_weights(rater, item, 3, 2, 40, np.random.default_rng(2)):  # [b, 6]
        grid = w.reshape(-1, 3, 2)
        raters, items = grid.sum(axis=2), grid.sum(axis=1)  # marginals, up to the other factor's total
        assert np.all(raters.sum(axis=1) == 6)              # 3 raters drawn x 2 items drawn
        assert np.allclose(grid * 6, raters[:, :, None] * items[:, None, :])  # a product of the two draws


def test_percentile_interval_ignores_undefined_replicates() -> None:
    replicates = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    low, high = percentile_interval(replicates, level=0.5)
    assert low[0] == pytest.approx(1.5) and high[0] == pytest.approx(2.5)
    assert math.isnan(low[1]) and math.isnan(high[1])
    empty_low, _ = percentile_interval(np.empty((0, 2)))
    assert np.all(np.isnan(empty_low))


def test_the_interval_of_a_mean_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(3)
    covered = []
    for _ in range(200):
        sample = rng.normal(1.0, 2.0, 30)
        low, high = mean_interval(sample, 500, rng)
        covered.append(low <= 1.0 <= high)
    assert 0.88 <= np.mean(covered) <= 0.99  # percentile intervals of n = 30 fall a little short of 95%
    assert all(math.isnan(v) for v in mean_interval(np.array([]), 10, rng))
