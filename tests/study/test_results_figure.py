"""The results figure of a built study answered through its store: colours per condition, caption inside."""

from __future__ import annotations

import uuid
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from conftest import CONDITIONS
from study_helpers import assert_inside, bar_colours

from coz_train.study.__main__ import analyze_study
from coz_train.study.analysis.figure import draw_figure
from coz_train.study.config import load_config
from coz_train.study.store import Store

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first
QUALITY = {"onestep-null": 2, "recursive-vlm": 3, "recursive_multiscale-vlm": 4, "control:nearest": 1,
           "control:mismatched-text": 1}


def answer_all(study: Path, seconds: float) -> None:
    store = Store(study / "study.sqlite")
    try:
        for n, rater in enumerate(store.raters()):
            for k, task in enumerate(store.tasks(rater)):
                score = min(5, max(1, QUALITY[task["condition"]] + (n + k) % 3 - 1))
                store.answer(rater, task["task"], score, None, seconds, uuid.uuid4().hex)
    finally:
        store.close()


def test_a_condition_has_one_colour_in_the_image_and_the_text_panel(make_study, tmp_path):
    study = make_study("study.raters=4")
    answer_all(study, seconds=3.0)
    results = analyze_study(study, load_config([f"analyze.out={tmp_path}", "analyze.n_boot=20"]))["results"]
    assert [m.condition for m in results.tests["text"].mos] == CONDITIONS[1:]  # onestep-null has no prompts
    fig = draw_figure(results)
    try:
        image, text = bar_colours(fig)
    finally:
        plt.close(fig)
    assert list(image) == CONDITIONS and len(set(image.values())) == len(CONDITIONS)
    assert text == {c: image[c] for c in CONDITIONS[1:]}


def test_the_caption_stays_inside_the_figure_when_every_rater_is_flagged(make_study, tmp_path):
    study = make_study("study.raters=3")
    answer_all(study, seconds=0.3)  # too fast for anyone to have looked: the screening flags every rater
    out = analyze_study(study, load_config([f"analyze.out={tmp_path}", "analyze.n_boot=20"]))
    results = out["results"]
    assert len(results.flags) == len(results.raters) == 3 and results.tests == {}
    assert (tmp_path / "results.png").is_file()
    fig = draw_figure(results)
    try:
        (caption,) = fig.texts
        assert_inside(fig, caption)
        assert "every one of the 3 raters was flagged" in caption.get_text().replace("\n", " ")
    finally:
        plt.close(fig)
