"""Quality metrics: PSNR/SSIM against hand computations on photographs, finite no-reference scores,
and metrics without weights reported with a reason instead of a number."""

import hashlib
import importlib.util
import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from coz_train.image_quality import METRIC_NAMES, Metric, MetricUnavailable, build_metrics, psnr, ssim

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


def _bt601_y(image: Image.Image) -> np.ndarray:
    """BT.601 luma in [16/255, 235/255], written out (not scikit-image's rgb2ycbcr)."""
    return (np.asarray(image, dtype=np.float64) / 255.0) @ np.array([65.481, 128.553, 24.966]) / 255 + 16 / 255


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. (2004) by hand: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, data range 1, mean
    over the window positions inside the image; separable sums over sliding windows, no scipy filter."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def window_mean(a: np.ndarray) -> np.ndarray:
        rows = np.lib.stride_tricks.sliding_window_view(a, 11, axis=0) @ g
        return np.lib.stride_tricks.sliding_window_view(rows, 11, axis=1) @ g

    mu_x, mu_y = window_mean(x), window_mean(y)
    var_x, var_y = window_mean(x * x) - mu_x**2, window_mean(y * y) - mu_y**2
    cov = window_mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean((2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))))


def _degraded(image: Image.Image, seed: int) -> dict[str, Image.Image]:
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=20)
    noise = np.random.default_rng(seed).normal(0, 10, (image.height, image.width, 3))
    w, h = image.size
    return {
        "blur": image.filter(ImageFilter.GaussianBlur(2)),
        "bicubic x4": image.resize((w // 4, h // 4), Image.BICUBIC).resize((w, h), Image.BICUBIC),
        "noise": Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8)),
        "jpeg q20": Image.open(jpeg).convert("RGB"),
    }


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_psnr_and_ssim_match_hand_written_references_on_photographs(name):
    reference = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
    assert ssim(reference, reference) == pytest.approx(1.0, abs=1e-12)
    y_ref = _bt601_y(reference)
    for how, image in _degraded(reference, seed=0).items():
        y = _bt601_y(image)
        assert psnr(image, reference) == pytest.approx(10 * math.log10(1 / np.mean((y - y_ref) ** 2)), abs=1e-9), how
        assert ssim(image, reference) == pytest.approx(_reference_ssim(y, y_ref), abs=1e-9), how
        assert ssim(image, reference) < 0.95, how


def test_ssim_needs_an_image_the_size_of_its_window():
    small = Image.new("RGB", (10, 32), (90, 90, 90))
    with pytest.raises(ValueError, match="11x11"):
        ssim(small, small)


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


@pytest.fixture
def empty_weight_caches(monkeypatch, tmp_path) -> Path:
    """Empty pyiqa, Hugging Face and torch hub caches, so a developer's downloaded weights do not make a test pass."""
    try:
        import pyiqa.utils.download_util

        monkeypatch.setattr(pyiqa.utils.download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    except ImportError:
        pass
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path


def test_metrics_without_weights_are_unavailable_with_a_reason(monkeypatch, empty_weight_caches):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = []
    if importlib.util.find_spec("pyiqa"):
        import pyiqa

        def create_metric(*args: object, **kwargs: object) -> None:
            built.append(args)
            raise AssertionError("pyiqa.create_metric was called")

        monkeypatch.setattr(pyiqa, "create_metric", create_metric)
    start = time.monotonic()
    metrics, unavailable = build_metrics(["musiq", "maniqa", "clipiqa", "psnr"], CPU)
    assert time.monotonic() - start < 20
    assert list(metrics) == ["psnr"]
    assert set(unavailable) == {"musiq", "maniqa", "clipiqa"}
    assert all(reason.strip() for reason in unavailable.values())
    if not importlib.util.find_spec("pyiqa"):
        assert "needs pyiqa" in unavailable["musiq"], unavailable["musiq"]
        return
    assert built == []  # decided from the cached files, before pyiqa builds anything
    caches = empty_weight_caches
    for name, where in [("musiq", caches / "pyiqa"), ("maniqa", caches / "hf"), ("maniqa", caches / "pyiqa"),
                        ("clipiqa", caches / "torch_hub" / "clip")]:
        reason = unavailable[name]
        if name != "musiq" and reason.startswith("needs"):
            continue  # timm or openai-clip is not installed
        assert "offline" in reason and str(where) in reason and f"--fetch-weights {name}`" in reason, reason


def test_a_cached_weight_file_is_the_one_pyiqa_loads(monkeypatch, empty_weight_caches):
    pytest.importorskip("pyiqa")
    from coz_train.image_quality.offline import weight_files

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [weights] = weight_files("musiq")
    assert weights.path.parent == empty_weight_caches / "pyiqa"
    weights.path.parent.mkdir(parents=True)
    weights.path.write_bytes(b"not a checkpoint")  # found, so nothing is downloaded; pyiqa then fails to read it
    metrics, unavailable = build_metrics(["musiq"], CPU)
    assert metrics == {}
    assert "could not be built: UnpicklingError" in unavailable["musiq"], unavailable["musiq"]


def test_niqe_without_any_parameter_file_names_the_missing_file_and_the_fetch_command(monkeypatch, empty_weight_caches):
    pytest.importorskip("pyiqa")
    from coz_train.image_quality import params

    def unreachable(sdist: object) -> bytes:
        raise OSError("PyPI unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COZ_TRAIN_IQA_DIR", str(empty_weight_caches / "iqa"))
    monkeypatch.setattr(params, "_param_dirs", lambda: [empty_weight_caches / "iqa"])
    monkeypatch.setattr(params, "_download_sdist", unreachable)
    metrics, unavailable = build_metrics(["niqe"], CPU)
    assert metrics == {}
    reason = unavailable["niqe"]
    assert "basicsr==1.4.2 sdist could not be fetched from PyPI (PyPI unreachable)" in reason, reason
    assert str(empty_weight_caches / "pyiqa") in reason and "--fetch-params`" in reason, reason


def test_missing_weights_are_fetched_into_the_loaders_place_and_checked(tmp_path):
    from coz_train.image_quality.offline import WeightFile, ensure_weights

    served = tmp_path / "served.pth"
    served.write_bytes(b"weights")
    good = WeightFile(tmp_path / "cache" / "a.pth", served.as_uri(), hashlib.sha256(b"weights").hexdigest())
    ensure_weights([good], lambda: None, "fetch-command")
    assert good.path.read_bytes() == b"weights"
    ensure_weights([good], lambda: pytest.fail("probed although nothing is missing"), "fetch-command")
    corrupt = WeightFile(tmp_path / "cache" / "b.pth", served.as_uri(), "0" * 64)
    with pytest.raises(MetricUnavailable, match="sha256"):
        ensure_weights([corrupt], lambda: None, "fetch-command")
    assert [path.name for path in (tmp_path / "cache").iterdir()] == ["a.pth"]  # no partial file left behind
    missing = WeightFile(tmp_path / "cache" / "c.pth", served.as_uri())
    with pytest.raises(MetricUnavailable, match=r"missing .*c\.pth; no network, .*`fetch-command`"):
        ensure_weights([missing], lambda: "no network", "fetch-command")
    assert not missing.path.exists()


def test_unknown_metric_names_raise():
    with pytest.raises(ValueError, match=r"eval\.metrics.*'lpipz'"):
        build_metrics(["psnr", "lpipz"], CPU)


def test_lpips_and_dists_are_full_reference_lower_is_better_and_derived_names_keep_the_direction():
    from coz_train.image_quality import base_metric, higher_is_better, is_full_reference, min_side

    assert {"lpips", "dists"} <= set(METRIC_NAMES)
    assert [is_full_reference(n) for n in ("lpips", "dists", "psnr", "ssim", "niqe")] == [True] * 4 + [False]
    assert (min_side("ssim"), min_side("lpips"), min_side("niqe"), min_side("psnr")) == (11, 31, 96, 1)
    assert not higher_is_better("lpips") and not higher_is_better("dists")
    assert higher_is_better("consistency_psnr") and higher_is_better("projected_ssim")
    assert not higher_is_better("consistency_lpips") and not higher_is_better("projected_dists")
    assert base_metric("consistency_ssim") == "ssim" and base_metric("niqe") == "niqe"
    with pytest.raises(KeyError, match="consistency_lpipz"):
        higher_is_better("consistency_lpipz")


def test_lpips_and_dists_without_weights_name_both_files_they_load(monkeypatch, empty_weight_caches):
    pytest.importorskip("pyiqa")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics, unavailable = build_metrics(["lpips", "dists"], CPU)
    assert metrics == {}
    hub = empty_weight_caches / "torch_hub" / "checkpoints"
    for name, trunk, calibrated in [("lpips", "alexnet-owt-7be5be79.pth", "LPIPS_v0.1_alex-df73285e.pth"),
                                    ("dists", "vgg16-397923af.pth", "DISTS_weights-f5e65c96.pth")]:
        reason = unavailable[name]
        assert str(hub / trunk) in reason and str(empty_weight_caches / "pyiqa" / calibrated) in reason, reason
        assert f"--fetch-weights {name}`" in reason, reason


def test_lpips_compares_an_image_with_its_reference_once_its_files_are_cached(empty_weight_caches, astronaut):
    """The files pyiqa's LPIPS loads, written where weight_files says, with RANDOM weights (AlexNet from its config,
    positive linear heads): no download happens, and the image and its reference both reach the network. The
    values of a random network mean nothing; identity (0) and the size checks are what is tested."""
    pytest.importorskip("pyiqa")
    import torchvision

    from coz_train.image_quality.offline import weight_files

    trunk, calibrated = weight_files("lpips")
    torch.manual_seed(0)
    for file in (trunk, calibrated):
        file.path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), trunk.path)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 192, 384, 256, 256])}
    torch.save(heads, calibrated.path)
    metrics, unavailable = build_metrics(["lpips"], CPU)
    assert unavailable == {}
    lpips = metrics["lpips"]
    assert lpips.full_reference and not lpips.higher_is_better
    image = astronaut.resize((64, 64), Image.BICUBIC)
    assert lpips(image, image) == 0.0
    assert lpips(image.transpose(Image.FLIP_LEFT_RIGHT), image) > lpips(image.filter(ImageFilter.GaussianBlur(1)), image) > 0
    with pytest.raises(ValueError, match="reference"):
        lpips(image)
    with pytest.raises(ValueError, match="differ in size"):
        lpips(image, astronaut)
    with pytest.raises(ValueError, match="31x31"):
        lpips(image.resize((30, 30)), image.resize((30, 30)))
