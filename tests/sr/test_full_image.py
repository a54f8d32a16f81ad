"""The full-image chain (method `full`): the official tile grid and Gaussian blending, exact on resamplers, the
latent path on the tiny OSEDiff-SD3, one prompt per tile, the config checks, and a smoke evaluation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from coz_train.data.zoom import start_state
from coz_train.eval.run import check_eval_config, evaluate
from coz_train.sr.backbones import load_backbone
from coz_train.sr.chain import zoom_windows
from coz_train.sr.full_image import (
    GaussianBlender,
    blended_latents,
    full_image_chains,
    gaussian_weights,
    tile_grid,
    tile_starts,
)
from coz_train.sr.prompter import VLMPrompter
from coz_train.tiny.sd3 import ensure_tiny_sd3, write_official_lora_files


@pytest.fixture(scope="module")
def start():
    return start_state(Image.fromarray(skdata.astronaut()), 64)


def px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class RecordingSource:
    """A prompt source that keeps every item it was shown and writes a distinct prompt for each."""

    def __init__(self):
        self.items = []

    def __call__(self, items):
        self.items += items
        return [f"tile {len(self.items) - len(items) + i}" for i in range(len(items))]


class InOrder:
    """A prompt source handing out the given prompts in order, one per item."""

    def __init__(self, prompts):
        self.prompts = iter(prompts)

    def __call__(self, items):
        return [next(self.prompts) for _ in items]


def test_the_tile_grid_is_the_official_one():
    # a 512 px image upscaled 4x is 256 SD3 latents: 64-latent tiles overlapping by 16 start every 48, 5 per axis
    assert tile_starts(256, 64, 16) == [0, 48, 96, 144, 192]
    assert tile_starts(100, 64, 16) == [0, 36]  # the last tile moved back to end at the border
    assert tile_starts(64, 64, 16) == [0]
    assert len(tile_starts(512, 128, 32)) == 5 and len(tile_starts(2048, 128, 32)) == 21  # 25, then 441 tiles
    boxes = tile_grid(64, 40, 16, 4)
    assert boxes[:2] == [(0, 0, 16, 16), (12, 0, 28, 16)]  # row by row, as the official loop
    covered = np.zeros((40, 64), dtype=int)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    with pytest.raises(ValueError, match="does not fit"):
        tile_grid(64, 12, 16, 4)


def test_gaussian_weights_are_the_official_profile():
    side = 64
    official = np.array(
        [np.exp(-((x - (side - 1) / 2) ** 2) / side**2 / 0.02) / np.sqrt(2 * np.pi * 0.01) for x in range(side)]
    )  # `_make_gaussian`'s x profile, var 0.01
    weights = gaussian_weights(side)
    np.testing.assert_allclose(weights, np.outer(official, official), rtol=1e-12)
    assert np.array_equal(weights, weights.T) and np.array_equal(weights, weights[::-1, ::-1])  # centred both ways
    assert weights[0, 32] / weights[31, 32] < 1e-4  # a tile's edge counts next to nothing against a centre


def test_blended_weights_sum_to_one_and_a_position_takes_only_the_tiles_covering_it():
    boxes = tile_grid(40, 40, 16, 6)
    ones = GaussianBlender(2, 40, 40, 16)
    ones.add(torch.full((len(boxes), 2, 16, 16), 3.0), [b[:2] for b in boxes])
    np.testing.assert_allclose(ones.result().numpy(), 3.0, rtol=1e-6)  # normalised weights: a constant stays put
    indexed = GaussianBlender(1, 40, 40, 16)
    indexed.add(
        torch.arange(len(boxes), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 16, 16), [b[:2] for b in boxes]
    )
    result = indexed.result()[0].numpy()
    for y in range(40):
        for x in range(40):
            covering = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x0 <= x < x1 and y0 <= y < y1]
            assert min(covering) - 1e-4 <= result[y, x] <= max(covering) + 1e-4
            if len(covering) == 1:
                assert result[y, x] == pytest.approx(covering[0])
    partial = GaussianBlender(1, 40, 40, 16)
    partial.add(torch.ones(1, 1, 16, 16), [(0, 0)])
    with pytest.raises(ValueError, match="do not cover"):
        partial.result()


def test_a_nearest_backbone_gives_the_whole_image_upscale_exactly(start):
    backbone = load_backbone("nearest", {}, None)
    [chain] = full_image_chains([start], backbone, RecordingSource(), "full-null", 4, 2, 16, 4, batch_size=7)
    assert [w.size for w in chain.whole] == [(64, 64), (256, 256), (1024, 1024)]
    assert np.array_equal(px(chain.whole[1]), px(start.resize((256, 256), Image.NEAREST)))
    assert np.array_equal(px(chain.whole[2]), px(start.resize((1024, 1024), Image.NEAREST)))
    # states[k]: the start's centre 64/4^k px, as the other methods show it at 4^k, at 64 x 64
    assert [s.size for s in chain.states] == [(64, 64)] * 3
    assert np.array_equal(px(chain.states[1]), px(start.crop((24, 24, 40, 40)).resize((64, 64), Image.NEAREST)))
    assert np.array_equal(px(chain.states[2]), px(start.crop((30, 30, 34, 34)).resize((64, 64), Image.NEAREST)))
    assert chain.boxes == zoom_windows(64, 4, 2) and chain.windows() == [(24, 24, 40, 40), (30, 30, 34, 34)]
    # a chosen zoom point: the states show the windows every other method zooms into
    windows = zoom_windows(64, 4, 2, (0.2, 0.7))
    [moved] = full_image_chains([start], backbone, RecordingSource(), "full-null", 4, 2, 16, 4, windows=[windows])
    assert moved.boxes == windows and windows[0] != (24, 24, 40, 40)
    for state, window in zip(moved.states[1:], windows, strict=True):
        assert np.array_equal(px(state), px(start.crop(window).resize((64, 64), Image.NEAREST)))


def test_a_bicubic_backbone_matches_the_whole_image_upscale_away_from_the_seams(start):
    backbone = load_backbone("bicubic", {}, None)
    [chain] = full_image_chains([start], backbone, RecordingSource(), "full-null", 4, 1, 16, 4)
    whole = start.resize((256, 256), Image.BICUBIC)
    # bicubic reads 2 input px each side: 3 px (12 output px) inside every tile covering it, a tile equals the whole
    away = np.ones((256, 256), dtype=bool)
    for left, top, right, bottom in chain.tile_boxes[0]:
        inner = np.zeros((256, 256), dtype=bool)
        inner[
            4 * top + (12 if top else 0) : 4 * bottom - (12 if bottom < 64 else 0),
            4 * left + (12 if left else 0) : 4 * right - (12 if right < 64 else 0),
        ] = True
        outer = np.zeros((256, 256), dtype=bool)
        outer[4 * top : 4 * bottom, 4 * left : 4 * right] = True
        away &= ~outer | inner
    assert away.mean() > 0.3
    assert np.array_equal(px(chain.whole[1])[away], px(whole)[away])
    assert np.abs(px(chain.whole[1]) - px(whole)).max() <= 2  # near a seam the tile edges weigh next to nothing


def test_every_tile_gets_its_own_prompt_from_the_whole_image_and_the_tile(start):
    backbone, source = load_backbone("bicubic", {}, None), RecordingSource()
    [chain] = full_image_chains([start], backbone, source, "full-vlm", 4, 2, 32, 8, batch_size=4)
    assert [len(b) for b in chain.tile_boxes] == [9, 121]  # 64 px: 3 x 3 tiles; 256 px: 11 x 11
    assert len(source.items) == 130
    seen = iter(source.items)
    for k, (boxes, prompts) in enumerate(zip(chain.tile_boxes, chain.tile_prompts, strict=True)):
        previous = chain.whole[k]
        upscaled = previous.resize((previous.width * 4, previous.height * 4), Image.LANCZOS)
        first = 0 if k == 0 else len(chain.tile_boxes[0])
        assert prompts == [f"tile {i}" for i in range(first, first + len(boxes))]
        for box in boxes:
            whole_image, tile = next(seen)
            assert np.array_equal(px(whole_image), px(start))  # the whole image at process_size, every step
            assert tile.size == (64, 64)  # the tile's 128 px zoomed input, at process_size
            expected = upscaled.crop(tuple(4 * v for v in box)).resize((64, 64), Image.BICUBIC)
            assert np.array_equal(px(tile), px(expected))
    # under each state the figure prints the prompt of the tile nearest the centre of the region it shows
    assert chain.prompts == [chain.tile_prompts[0][4], chain.tile_prompts[1][60]]


@pytest.fixture(scope="module")
def osediff(tmp_path_factory):
    sd3 = ensure_tiny_sd3()
    folder = tmp_path_factory.mktemp("lora")
    write_official_lora_files(sd3, folder, seed=1)
    return load_backbone("osediff_sd3", {"sd3": sd3, "lora_dir": str(folder), "dtype": "float32"}, None)


def test_the_latent_path_steps_each_latent_tile_with_its_prompt_and_blends_as_the_official_code(osediff, start):
    upscaled = start.resize((256, 256), Image.LANCZOS)
    boxes = tile_grid(64, 64, 32, 8)  # 128 px = 16 latents per tile, overlapping by 4, at 0, 12, 16
    prompts = [f"a photo, part {i}" for i in range(len(boxes))]
    z = blended_latents(osediff, upscaled, boxes, prompts, 4, batch_size=4)
    # the official create_full_latent, written out: encode once, z - v per tile, sum(w * tile) / sum(w)
    full = osediff.encode_latents([upscaled])
    weights = torch.from_numpy(gaussian_weights(16)).float()
    total, norm = torch.zeros_like(full), torch.zeros_like(full)
    for (left, top, _, _), prompt in zip(boxes, prompts, strict=True):
        x, y = left // 2, top // 2
        tile = osediff.denoise_latents(full[:, :, y : y + 16, x : x + 16], [prompt])
        total[:, :, y : y + 16, x : x + 16] += tile * weights
        norm[:, :, y : y + 16, x : x + 16] += weights
    torch.testing.assert_close(z, total / norm, atol=1e-5, rtol=1e-5)
    # one tile's prompt changes the latents under that tile only
    other = blended_latents(osediff, upscaled, boxes, ["fur, whiskers"] + prompts[1:], 4, batch_size=4)
    change = (other - z).abs()[0].amax(0)
    assert change[:16, :16].max() > 1e-3 and change[16:, :].max() < 1e-5 and change[:, 16:].max() < 1e-5
    # the chain decodes the blended latent once, without the VAE shift (the official decode_full_latent)
    [chain] = full_image_chains([start], osediff, InOrder(prompts), "full-vlm", 4, 1, 32, 8, batch_size=4)
    assert chain.tile_prompts == [prompts]
    assert np.array_equal(px(chain.whole[1]), px(osediff.decode_latents(z, shift=False)[0]))
    [shifted] = full_image_chains(
        [start], osediff, InOrder(prompts), "full-vlm", 4, 1, 32, 8, batch_size=4, decode_shift=True
    )
    assert np.abs(px(shifted.whole[1]) - px(chain.whole[1])).mean() > 0.5


def test_latent_tiles_off_the_latent_grid_are_refused(osediff, start):
    with pytest.raises(ValueError, match=r"eval\.full_image\.tile_size=30 / tile_overlap=8.*multiples of 16"):
        full_image_chains([start], osediff, RecordingSource(), "full-vlm", 4, 1, 30, 8)


def test_tile_prompts_have_their_own_length_limit_from_the_same_model(compose_cfg, tmp_path_factory):
    policy = compose_cfg(["+experiment=smoke_eval"], tmp_path_factory.mktemp("run")).policy
    prompter = VLMPrompter(policy, None, "cpu", max_new_tokens=8, do_sample=False, batch_size=2)
    tiles = prompter.with_max_new_tokens(2)
    assert tiles.model is prompter.model and prompter.max_new_tokens == 8  # nothing reloaded, nothing changed
    views = [[Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]]
    [short], [long] = tiles.prompts(views, use_adapter=False), prompter.prompts(views, use_adapter=False)
    assert 0 < len(short) < len(long)  # a random tiny VLM writes up to the limit


SMALL = [
    "+experiment=smoke_eval",
    "eval.process_size=64",
    "eval.full_image.tile_size=32",
    "eval.full_image.tile_overlap=8",
]


def test_a_bad_full_image_config_is_refused_before_models_load(make_config):
    check_eval_config(make_config(*SMALL, "eval.methods=[full]"))
    for overrides, message in [
        (["eval.full_image.tile_overlap=32"], r"eval\.full_image\.tile_size=32 / tile_overlap=32"),
        (["eval.full_image.tile_overlap=-1"], r"tile_overlap=-1"),
        (["eval.full_image.tile_size=0"], r"eval\.full_image\.tile_size=0"),
        (["eval.full_image.tile_size=128"], r"tile_size=128 is larger than the start state \(eval\.process_size=64"),
        (["eval.full_image.steps=4"], r"eval\.full_image\.steps=4: give 1 <= steps <= eval\.steps \(3\)"),
        (["eval.full_image.steps=0"], r"eval\.full_image\.steps=0"),
        (
            ["eval.full_image.steps=3", "eval.full_image.max_side=2048"],
            r"last full state 4096 x 4096 px.*eval\.full_image\.max_side=2048",
        ),
        (["eval.full_image.max_new_tokens=0"], r"eval\.full_image\.max_new_tokens=0"),
    ]:
        bad = make_config(*SMALL, "eval.methods=[full]", *overrides)
        with pytest.raises(ValueError, match=message):
            check_eval_config(bad)
    check_eval_config(make_config(*SMALL, "eval.full_image.tile_overlap=32"))  # only checked when `full` runs
    bad = make_config(*SMALL, "eval.methods=[full]", "eval.full_image.tile_overlap=40")
    with pytest.raises(ValueError, match=r"tile_overlap=40"):
        evaluate(bad)
    assert not (Path(bad.output_dir) / "per-sample").exists()


def test_a_smoke_evaluation_of_the_full_method(make_config):
    """Real-ESRGAN x4plus and the tiny VLM on the shipped images: the full rows, the whole states, the tiles."""
    cfg = make_config(
        *SMALL,
        "eval.methods=[full,bicubic]",
        "eval.prompt_sources=[vlm]",
        "eval.metrics=[piqe,psnr]",
        "eval.batch_size=9",
    )
    out = evaluate(cfg)
    rows = list(csv.DictReader((out / "results.csv").open()))
    keys = {(r["method"], r["scale"], r["metric"]): int(r["n"]) for r in rows}
    for method in ("full-vlm", "full-vlm/whole"):
        assert keys[(method, "4", "piqe")] == 2 and keys[(method, "4", "psnr")] == 2  # both images
        assert not any(m == method and s != "4" for m, s, _ in keys)  # one full step (eval.full_image.steps)
    assert keys[("bicubic", "64", "piqe")] == 2
    md = (out / "results.md").read_text()
    assert "| full-vlm |" in md and "full-vlm/whole" not in md  # the tables compare like with like
    for image in ("astronaut", "coffee"):
        folder = out / "per-sample" / image / "full-vlm"
        assert [Image.open(folder / f"{k}.png").size for k in (0, 1)] == [(64, 64)] * 2
        assert Image.open(folder / "whole-1.png").size == (256, 256)
        tiles = json.loads((folder / "tiles.json").read_text())["1"]
        assert len(tiles) == 9 and all(t["prompt"] for t in tiles)  # the tiny VLM wrote a prompt per tile
        assert json.loads((folder / "prompts.json").read_text()) == {"1": tiles[4]["prompt"]}
        assert (out / "per-sample" / image / "chains.png").is_file()
