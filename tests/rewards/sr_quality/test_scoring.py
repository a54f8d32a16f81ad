"""The SR-quality arithmetic on hand-written values: the [0, 1] mapping, the wider-view agreement, the mix."""

import math

import numpy as np
import pytest
from PIL import Image

from coz_train.rewards.sr_quality import METRIC_RANGES, agreement, combine, low_frequency_error, unit_score


def test_fixed_ranges_map_onto_0_1_clipped_and_lower_is_better_turns_the_sign():
    assert unit_score(60.0, 0.0, 100.0, higher_is_better=True) == pytest.approx(0.6)  # MUSIQ 60
    assert unit_score(5.0, 0.0, 20.0, higher_is_better=False) == pytest.approx(0.75)  # NIQE 5
    assert unit_score(31.0, 0.0, 20.0, higher_is_better=False) == 0.0  # NIQE of noise: clipped
    assert unit_score(-1.0, 0.0, 20.0, higher_is_better=False) == 1.0
    assert unit_score(math.nan, 0.0, 20.0, higher_is_better=False) is None  # undefined, never a number
    assert set(METRIC_RANGES) == {"niqe", "brisque", "piqe", "musiq", "maniqa", "clipiqa"}


def test_low_frequency_error_sees_what_the_wider_view_sees_and_ignores_finer_texture():
    crop = Image.fromarray(np.full((8, 8, 3), 100, dtype=np.uint8))
    flat = np.full((32, 32, 3), 100, dtype=np.int16)
    checker = (np.indices((32, 32)).sum(axis=0) % 2 * 2 - 1)[..., None] * 40  # +-40, zero mean in every 4x4 block
    textured = Image.fromarray((flat + checker).astype(np.uint8))
    assert low_frequency_error(textured, crop) == 0.0
    brighter = Image.fromarray((flat + 51).astype(np.uint8))
    assert low_frequency_error(brighter, crop) == pytest.approx(51 / 255)
    with pytest.raises(ValueError, match="multiple"):
        low_frequency_error(Image.new("RGB", (30, 30)), crop)


def test_agreement_is_linear_down_to_zero_at_the_tolerance():
    assert agreement(0.0, 0.1) == 1.0
    assert agreement(0.05, 0.1) == pytest.approx(0.5)
    assert agreement(0.3, 0.1) == 0.0


def test_combine_is_a_weighted_mean_and_a_missing_part_gives_no_score():
    parts = {"iqa": [0.8, 0.2, None], "reference": [0.2, 1.0, 1.0]}
    out = combine(parts, {"iqa": 1.0, "reference": 3.0})
    assert out[:2] == [pytest.approx((0.8 + 0.6) / 4), pytest.approx((0.2 + 3.0) / 4)]
    assert out[2] is None
    assert combine({"iqa": [0.4]}, {"iqa": 1.0, "reference": 2.0}) == [pytest.approx(0.4)]  # parts that are off
