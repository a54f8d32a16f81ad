"""Cross-scale consistency on real photographs: agreeing chains score well, a contradicting state scores worse, and
the projection of the deepest state exists exactly where a ground truth does."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from coz_train.data.zoom import start_state
from coz_train.eval.consistency import ConsistencyScores, projection, sources
from coz_train.image_quality import build_metrics, psnr
from coz_train.sr.backbones import load_backbone
from coz_train.sr.chain import (
    Chain,
    onestep_chains,
    recursive_chains,
    reference_states,
    resample_chain,
    step_boxes,
    zoom_windows,
)
from coz_train.sr.prompter import prompt_source

SCALES = [4, 16, 64]


@pytest.fixture(scope="module")
def scorer() -> ConsistencyScores:
    metrics, unavailable = build_metrics(["psnr", "ssim"], torch.device("cpu"))
    assert unavailable == {}
    return ConsistencyScores(metrics)


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return Image.fromarray(skdata.astronaut())  # 512 px: a ground truth at 4x for a 128 px start, none deeper


def by_key(scores: list) -> dict:
    return {(method, scale, metric): value for method, scale, metric, value in scores}


def bicubic_recursive(start: Image.Image, steps: int = 3, centre=None) -> Chain:
    boxes = [step_boxes(zoom_windows(128, 4, steps, centre), 128, 4)]
    null, backbone = prompt_source("null", None, None), load_backbone("bicubic", {}, None)
    [chain] = recursive_chains([start], backbone, null, "recursive-null", 4, steps, boxes=boxes)
    return chain


def test_each_state_is_compared_with_the_crop_it_was_made_from(original):
    start = start_state(original, 128)
    recursive = bicubic_recursive(start)
    for k, source in enumerate(sources(recursive), start=1):  # the 32 px crop of state k-1 the backbone got
        assert np.array_equal(np.asarray(source), np.asarray(recursive.states[k - 1].crop((48, 48, 80, 80))))
    resampled = resample_chain(start, "nearest", 4, 3)
    first, second, third = sources(resampled)  # the start's window, bicubic-resized to 32 px
    assert np.array_equal(np.asarray(first), np.asarray(start.crop((48, 48, 80, 80))))
    assert np.array_equal(np.asarray(second), np.asarray(start.crop((60, 60, 68, 68)).resize((32, 32), Image.BICUBIC)))
    assert third.size == (32, 32)


def test_a_state_that_contradicts_the_wider_view_scores_worse(original, scorer):
    start = start_state(original, 128)
    agreeing = bicubic_recursive(start)
    flipped = bicubic_recursive(start)
    flipped.method = "flipped"
    flipped.states[1] = flipped.states[1].transpose(Image.FLIP_LEFT_RIGHT)  # state 1 mirrors what it was made from
    bicubic = resample_chain(start, "bicubic", 4, 3)
    scores = by_key(scorer([agreeing, flipped, bicubic], [None, None, None], SCALES))
    for metric, margin in (("consistency_psnr", 10), ("consistency_ssim", 0.3)):
        assert scores[("flipped", 4, metric)] < scores[("recursive-null", 4, metric)] - margin
    for scale in SCALES:  # a chain of bicubic resizes agrees with itself at every scale
        assert scores[("bicubic", scale, "consistency_psnr")] > 35
        assert scores[("bicubic", scale, "consistency_ssim")] > 0.98
    untouched = ("flipped", 64, "consistency_psnr"), ("recursive-null", 64, "consistency_psnr")  # state 3 vs state 2
    assert scores[untouched[0]] == scores[untouched[1]]


def test_onestep_is_compared_with_the_start_like_the_resample_chains(original, scorer):
    start = start_state(original, 128)
    [onestep] = onestep_chains([start], load_backbone("bicubic", {}, None), 4, 3)
    bicubic = resample_chain(start, "bicubic", 4, 3)
    scores = by_key(scorer([onestep, bicubic], [None] * 3, SCALES))
    for scale in SCALES:  # the bicubic backbone on the start's window makes the bicubic chain's states
        assert scores[("onestep-null", scale, "consistency_psnr")] == scores[("bicubic", scale, "consistency_psnr")]


def test_the_projection_exists_where_a_ground_truth_does(original, scorer):
    start = start_state(original, 128)
    chain = resample_chain(start, "bicubic", 4, 2)
    references = reference_states(original, 128, 4, 2)
    assert references[0] is not None and references[1] is None  # 512 px: 4x only
    image, target = projection(chain, references)
    # state 2 shows the start's (60, 60, 68, 68); the 4x ground truth shows (48, 48, 80, 80), 4x larger
    assert np.array_equal(np.asarray(target), np.asarray(references[0].crop((48, 48, 80, 80))))
    assert image.size == (32, 32)
    scores = by_key(scorer([chain], references, SCALES[:2]))
    assert scores[("bicubic", 16, "projected_psnr")] == pytest.approx(psnr(image, target))
    assert 20 < scores[("bicubic", 16, "projected_psnr")] < 60
    assert ("bicubic", 4, "projected_psnr") not in scores  # reported at the deepest scale only
    small = original.resize((400, 400), Image.LANCZOS)  # no ground truth at any zoom
    assert projection(chain, reference_states(small, 128, 4, 2)) is None
    assert not [key for key in scorer([chain], reference_states(small, 128, 4, 2), SCALES[:2]) if "projected" in key[2]]


def test_a_projected_region_smaller_than_a_metric_takes_gives_no_value(original, scorer, caplog):
    start = start_state(original, 128)
    chain = resample_chain(start, "bicubic", 4, 3)  # 64x: 8 px of the 4x ground truth, SSIM needs 11
    with caplog.at_level(logging.WARNING):
        scores = by_key(scorer([chain], reference_states(original, 128, 4, 3), SCALES))
    assert ("bicubic", 64, "projected_psnr") in scores and ("bicubic", 64, "projected_ssim") not in scores
    assert "projected_ssim: no value where the compared region is under 11 px" in caplog.text


def test_a_wrong_ground_truth_region_projects_worse(original, scorer):
    """The ground truth follows the zoom windows: the chain's own windows agree, the centre's do not."""
    start = start_state(original, 128)
    windows = zoom_windows(128, 4, 2, (0.3, 0.25))
    chain = resample_chain(start, "bicubic", 4, 2, windows)
    own = by_key(scorer([chain], reference_states(original, 128, 4, 2, windows), SCALES[:2]))
    centre = by_key(scorer([chain], reference_states(original, 128, 4, 2), SCALES[:2]))
    for metric, margin in (("projected_psnr", 5), ("projected_ssim", 0.2)):
        assert own[("bicubic", 16, metric)] > centre[("bicubic", 16, metric)] + margin


def test_only_full_reference_metrics_and_chains_with_windows(scorer, caplog):
    metrics, _ = build_metrics(["psnr", "piqe"], torch.device("cpu"))
    with pytest.raises(ValueError, match=r"eval\.consistency_metrics: \['piqe'\]"):
        ConsistencyScores(metrics)
    states = [Image.new("RGB", (64, 64), (20 * k, 40, 60)) for k in range(3)]
    with caplog.at_level(logging.WARNING):
        assert scorer([Chain("full-null", states, ["", ""])], [None, None], SCALES[:2]) == []
    assert "full-null records no crop windows" in caplog.text
    with pytest.raises(ValueError, match="1 crop windows for 2 steps"):
        sources(Chain("broken", states, ["", ""], boxes=[(16, 16, 48, 48)]))
    assert ConsistencyScores({})([resample_chain(states[0], "bicubic", 4, 2)], [None, None], SCALES[:2]) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.consistency_metrics=[psnr,lpipz]"], r"unknown metric\(s\) \['lpipz'\]"),
        (["eval.consistency_metrics=[niqe]"], r"\['niqe'\] are no-reference metrics"),
        (
            ["eval.process_size=32", "eval.steps=2", "eval.consistency_metrics=[psnr,ssim]"],
            r"\['ssim'\] need at least 11 px, but the states are compared at eval\.process_size / eval\.scale = 8 px",
        ),
        (
            ["eval.consistency_metrics=[lpips]", "eval.process_size=64", "eval.steps=2"],
            r"\['lpips'\] need at least 31 px",
        ),
    ],
)
def test_consistency_metrics_are_checked_before_anything_loads(make_config, overrides, message):
    from coz_train.eval.methods import check_eval_config

    check_eval_config(make_config("+experiment=smoke_eval", "eval.consistency_metrics=[]"))
    check_eval_config(make_config("+experiment=smoke_eval", "eval.consistency_metrics=[psnr,ssim,lpips,dists]"))
    with pytest.raises(ValueError, match=rf"eval\.consistency_metrics: {message}"):
        check_eval_config(make_config("+experiment=smoke_eval", *overrides))
