"""The SR-quality reward on the tiny SD3 backbone and a real metric (NIQE, built from its shipped parameters)."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from coz_train.data import build_zoom_dataset
from coz_train.rewards import build_rewards
from coz_train.rewards.sr_quality import SRQualityReward, load_metric, parse_settings

PROMPTS = ["fur, whiskers", "brick wall, stone", "sky, clouds", "a red car"]


@pytest.fixture(scope="module")
def sr_cfg(compose_cfg, tmp_path_factory, tiny_osediff):
    overrides = ["+experiment=smoke", "rewards.critic.weight=0", "rewards.phrase_exclusion.weight=0",
                 "rewards.repetition.weight=0", "rewards.sr_quality.weight=1", "rewards.sr_quality.device=cpu",
                 *tiny_osediff]
    return compose_cfg(overrides, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def reward(sr_cfg):
    funcs, weights = build_rewards(sr_cfg)
    assert [f.__name__ for f in funcs] == ["sr_quality"] and weights == [1.0]
    return funcs[0]


@pytest.fixture(scope="module")
def batch(sr_cfg):
    """Two zoom pairs x the four PROMPTS, as TRL hands a reward the rows of two groups."""
    rows = [build_zoom_dataset(sr_cfg.data, 0)[i] for i in (0, 1)]
    return {"completions": PROMPTS * 2, "images": [r["images"] for r in rows for _ in PROMPTS],
            "crop_box": [r["crop_box"] for r in rows for _ in PROMPTS]}


def test_different_prompts_give_different_scores_in_0_1(reward, batch):
    logged = {}
    scores = reward(**batch, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert len(scores) == 8 and all(0.0 <= s <= 1.0 for s in scores)
    for group in (scores[:4], scores[4:]):
        assert len(set(group)) == 4, group  # each prompt makes its own output: a non-zero advantage
    assert scores == reward(**batch)  # deterministic
    assert {"sr_quality/iqa", "sr_quality/niqe", "sr_quality/undefined", "sr_quality/backbone_s",
            "sr_quality/metric_s"} <= set(logged)
    assert logged["sr_quality/iqa"] == pytest.approx(np.mean(scores))
    assert logged["sr_quality/niqe"] == pytest.approx(np.mean([20 * (1 - s) for s in scores]))  # niqe range [0, 20]


def test_one_backbone_call_for_the_batch_and_repeated_prompts_run_once(reward, batch, monkeypatch):
    calls = []
    upscale = reward.backbone.upscale
    monkeypatch.setattr(reward.backbone, "upscale", lambda images, prompts: calls.append(len(images)) or upscale(images, prompts))
    same = {**batch, "completions": [PROMPTS[0]] * 4 + PROMPTS}
    scores = reward(**same)
    assert calls == [5]  # 8 candidates, 5 distinct (crop, prompt) pairs, one call
    assert len(set(scores[:4])) == 1
    assert scores[4:] == reward(**batch)[4:]


def test_backbone_is_frozen_on_the_configured_device(reward):
    modules = [m for m in (*reward.backbone.text_encoders, reward.backbone.transformer, reward.backbone.vae) if m is not None]
    params = [p for m in modules for p in m.parameters()]
    assert params and not any(p.requires_grad for p in params)
    assert not any(m.training for m in modules)
    assert {p.device.type for p in params} == {"cpu"}
    assert reward.metric.name == "niqe" and reward.metric.higher_is_better is False


class ConstructedBackbone:
    """A prompt-conditioned stand-in whose outputs are built by hand from the crop, to know which one is right.

    "agree": the crop enlarged 4x; "contradict": the crop turned upside down, enlarged. Both carry the same fine
    texture (seeded noise, sigma 6 grey levels, with the mean of every 4x4 block removed) that the wider view
    cannot see.
    """

    name, scale, uses_prompt = "constructed", 4, True

    def upscale(self, images, prompts, size=None):
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            base = image if prompt == "agree" else image.transpose(Image.Transpose.ROTATE_180)
            big = np.asarray(base.resize((4 * image.width, 4 * image.height), Image.BICUBIC), dtype=np.float64)
            noise = np.random.default_rng(0).normal(0, 6, big.shape)
            blocks = noise.reshape(image.height, 4, image.width, 4, 3)
            texture = (blocks - blocks.mean(axis=(1, 3), keepdims=True)).reshape(big.shape)
            out.append(Image.fromarray(np.clip(big + texture, 0, 255).round().astype(np.uint8)))
        return out


def test_reference_aware_penalises_an_output_that_contradicts_the_wider_view_more(sr_cfg):
    previous = Image.fromarray(data.astronaut()).resize((512, 512), Image.LANCZOS)
    box = [192, 64, 320, 192]  # the face: turned upside down it no longer matches the previous state
    niqe = load_metric("niqe", torch.device("cpu"))
    inputs = {"completions": ["agree", "contradict"], "images": [[previous, None]] * 2, "crop_box": [box] * 2}

    def run(**settings):
        logged = {}
        reward = SRQualityReward(ConstructedBackbone(), niqe, parse_settings(settings))
        return reward(**inputs, log_metric=lambda k, v: logged.__setitem__(k, v)), logged

    (plain_agree, plain_contra), _ = run()
    (agree, contra), logged = run(reference_aware=True)
    assert agree > contra
    assert plain_contra - contra > plain_agree - agree + 0.2  # the penalty falls on the contradicting output
    assert logged["sr_quality/reference_error"] > 0 and 0.0 <= logged["sr_quality/reference"] <= 1.0
    parts = SRQualityReward(ConstructedBackbone(), niqe, parse_settings({"reference_aware": True})).score(
        ConstructedBackbone().upscale([previous.crop(box)] * 2, ["agree", "contradict"]), [previous.crop(box)] * 2,
        [previous] * 2, ["agree", "contradict"])
    assert parts["reference"][0] > 0.7 and parts["reference"][1] < 0.2


def test_the_critic_judge_uses_the_critic_rewards_model_and_is_logged(compose_cfg, tmp_path_factory, tiny_osediff, batch):
    cfg = compose_cfg(["+experiment=smoke", "rewards.phrase_exclusion.weight=0", "rewards.repetition.weight=0",
                       "rewards.sr_quality.weight=1", "rewards.sr_quality.critic_judge=true",
                       "rewards.sr_quality.reference_aware=true", *tiny_osediff], tmp_path_factory.mktemp("run"))
    (critic, sr_quality), _ = build_rewards(cfg)
    assert sr_quality.judge.backend.model is critic.backend.model  # one critic loaded, asked two questions
    assert "super-resolved" in sr_quality.judge.backend.cfg.instruction
    assert "super-resolved" not in critic.backend.cfg.instruction
    logged = {}
    scores = sr_quality(**batch, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert {"sr_quality/iqa", "sr_quality/reference", "sr_quality/critic", "sr_quality/critic/unparsable"} <= set(logged)
    weights = {"iqa": 1.0, "reference": 1.0, "critic": 1.0}
    assert sr_quality.settings.part_weights() == weights
