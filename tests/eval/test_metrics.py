"""Quality metrics: PSNR/SSIM against hand computations, finite no-reference scores on a photograph,
and metrics without weights reported with a reason instead of a number."""

import importlib.util
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data
from skimage.metrics import structural_similarity

from coz_train.eval.metrics import METRIC_NAMES, Metric, build_metrics, luma, psnr, ssim, to_tensor

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((256, 256), Image.BICUBIC)


def test_metric_names_cover_the_paper_and_the_offline_metrics():
    assert {"niqe", "piqe", "brisque", "musiq", "maniqa", "clipiqa", "psnr", "ssim"} <= set(METRIC_NAMES)


def test_psnr_of_identical_images_is_inf_and_of_a_known_pair_matches_the_formula():
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert psnr(Image.fromarray(grey), Image.fromarray(grey)) == math.inf
    noisy = grey.copy()
    noisy[::2] += 10  # every other row, all three channels, +10 grey levels
    # BT.601 luma weights sum to 219/255, so Y moves by (10/255)*(219/255) on half of the pixels.
    delta_y = (10 / 255) * (219 / 255)
    expected = 10 * math.log10(1 / (0.5 * delta_y**2))
    assert psnr(Image.fromarray(noisy), Image.fromarray(grey)) == pytest.approx(expected, abs=1e-10)


def test_psnr_uses_the_y_channel(astronaut):
    rng = np.random.default_rng(0)
    clean = np.asarray(astronaut)
    noisy = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    y = (clean / 255.0) @ np.array([65.481, 128.553, 24.966]) / 255 + 16 / 255
    y_noisy = (noisy / 255.0) @ np.array([65.481, 128.553, 24.966]) / 255 + 16 / 255
    expected = 10 * math.log10(1 / np.mean((y - y_noisy) ** 2))
    assert psnr(Image.fromarray(noisy), astronaut) == pytest.approx(expected, abs=1e-6)


def test_ssim_is_one_for_identical_images_and_matches_skimage(astronaut):
    assert ssim(astronaut, astronaut) == pytest.approx(1.0, abs=1e-12)
    blurred = astronaut.filter(ImageFilter.GaussianBlur(1.5))
    y, y_blurred = (luma(to_tensor(im, torch.float64))[0, 0].numpy() for im in (astronaut, blurred))
    expected = structural_similarity(y, y_blurred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
    assert ssim(blurred, astronaut) == pytest.approx(expected, abs=1e-9)
    assert ssim(blurred, astronaut) < 0.95


def test_full_reference_metrics_need_a_reference_of_the_same_size(astronaut):
    metrics, unavailable = build_metrics(["psnr", "ssim"], CPU)
    assert unavailable == {}
    for metric in metrics.values():
        assert isinstance(metric, Metric) and metric.full_reference and metric.higher_is_better
        with pytest.raises(ValueError, match="reference"):
            metric(astronaut)
        with pytest.raises(ValueError, match="size"):
            metric(astronaut, astronaut.resize((128, 128)))


def test_no_reference_metrics_give_finite_numbers_and_niqe_ranks_blur_worse(astronaut):
    metrics, unavailable = build_metrics(["niqe", "piqe", "brisque"], CPU)
    assert set(metrics) == {"niqe", "piqe", "brisque"}, unavailable
    blurred = astronaut.filter(ImageFilter.GaussianBlur(4))
    for name, metric in metrics.items():
        assert not metric.higher_is_better and not metric.full_reference
        sharp_value, blurred_value = metric(astronaut), metric(blurred)
        assert math.isfinite(sharp_value) and math.isfinite(blurred_value), name
    assert metrics["niqe"](blurred) > metrics["niqe"](astronaut) + 2
    assert metrics["brisque"](blurred) > metrics["brisque"](astronaut)
    assert metrics["niqe"](astronaut) == metrics["niqe"](astronaut)  # deterministic
    with pytest.raises(ValueError, match="96x96"):
        metrics["niqe"](astronaut.resize((64, 64)))


def test_a_score_undefined_for_a_flat_image_is_nan_not_a_crash():
    metrics, unavailable = build_metrics(["niqe", "piqe", "brisque"], CPU)
    assert set(metrics) == {"niqe", "piqe", "brisque"}, unavailable
    black = Image.new("RGB", (128, 128))
    assert {name: math.isnan(metric(black)) for name, metric in metrics.items()} == dict.fromkeys(metrics, True)
    assert math.isnan(metrics["niqe"](Image.new("RGB", (128, 128), (90, 90, 90))))


def test_metrics_without_weights_are_unavailable_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:  # an empty weights cache, so a developer's downloaded weights do not make the test pass
        import pyiqa.utils.download_util

        monkeypatch.setattr(pyiqa.utils.download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    except ImportError:
        pass
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    start = time.monotonic()
    metrics, unavailable = build_metrics(["musiq", "maniqa", "clipiqa", "psnr"], CPU)
    assert time.monotonic() - start < 20
    assert list(metrics) == ["psnr"]
    assert set(unavailable) == {"musiq", "maniqa", "clipiqa"}
    assert all(reason.strip() for reason in unavailable.values())
    expected = "offline" if importlib.util.find_spec("pyiqa") else "needs pyiqa"
    assert expected in unavailable["musiq"], unavailable["musiq"]


def test_unknown_metric_names_raise():
    with pytest.raises(ValueError, match=r"eval\.metrics.*'lpipz'"):
        build_metrics(["psnr", "lpipz"], CPU)
