"""The results figure: one colour per condition in every panel, and a caption inside the figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from study_helpers import assert_inside, bar_colours

from coz_train.study.analysis import analyze
from coz_train.study.analysis.figure import draw_figure, save_figure
from coz_train.study.analysis.simulate import ScoreModel, simulate_mos, simulate_pairs

ORDER = ["Single", "Multiple", "GRPO"]


def test_each_condition_has_one_colour_in_every_panel() -> None:
    rng = np.random.default_rng(1)
    ratings = simulate_mos(ScoreModel(dict(zip(ORDER, (2.9, 3.5, 3.9), strict=True))), 8, 12, rng)
    # the text test has no "Single" (a condition without prompts): its bars start one place later
    ratings += simulate_mos(ScoreModel(dict(zip(ORDER[1:], (3.3, 4.0), strict=True))), 8, 12, rng, test="text")
    ratings += simulate_pairs(dict(zip(ORDER, (-0.6, 0.0, 0.6), strict=True)), 6, 6, rng)
    # "GRPO" comes first in the ratings; the colours follow the study's order, not the order seen
    results = analyze(sorted(ratings, key=lambda r: r.condition != "GRPO"), conditions=ORDER, n_boot=20)
    fig = draw_figure(results)
    try:
        panels = bar_colours(fig)
    finally:
        plt.close(fig)
    assert [sorted(p) for p in panels] == [sorted(ORDER), sorted(ORDER[1:]), sorted(ORDER)]
    colour = panels[0]
    assert len(set(colour.values())) == len(ORDER)
    for panel in panels[1:]:
        assert panel == {c: colour[c] for c in panel}, (panels[0], panel)


@pytest.mark.parametrize("drop_flagged", [True, False])
def test_the_caption_stays_inside_the_figure_with_every_rater_flagged(tmp_path: Path, drop_flagged: bool) -> None:
    rng = np.random.default_rng(2)
    ratings = simulate_mos(ScoreModel(dict(zip(ORDER, (2.9, 3.5, 3.9), strict=True))), 5, 12, rng,
                           careless={f"c{k}": "fast" for k in range(5)})  # all too fast
    results = analyze(ratings, conditions=ORDER, n_boot=20, drop_flagged=drop_flagged)
    assert len(results.flags) == len(results.raters) == 5
    fig = draw_figure(results)
    try:
        (caption,) = fig.texts
        assert_inside(fig, caption)
        for ax in fig.axes:
            for text in ax.texts:
                assert_inside(fig, text)
        if drop_flagged:
            assert "every one of the 5 raters was flagged" in caption.get_text().replace("\n", " ")
    finally:
        plt.close(fig)
    path = save_figure(results, tmp_path / "results.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
