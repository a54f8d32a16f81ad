"""Deciding, before pyiqa builds a metric, whether the weight files it will load are here.

What pyiqa 0.1.16 loads when it builds each metric (from its `archs/*_arch.py`), with <pyiqa> its
cache `pyiqa.utils.download_util.DEFAULT_CACHE_DIR` (`<torch hub dir>/pyiqa`):

- `musiq`: <pyiqa>/musiq_koniq_ckpt-*.pth (`musiq_arch.default_model_urls["koniq10k"]`);
- `maniqa` (`maniqa-pipal`): <pyiqa>/MANIQA_PIPAL-*.pth, and first timm's `vit_base_patch8_224`
  (`create_model(..., pretrained=True)`: `model.safetensors` of its hub repo, from the Hugging Face cache);
- `clipiqa`: `<torch hub dir>/clip/RN50.pt`, pyiqa's own CLIP loader (the sha256 is in its URL);
- `niqe`, `brisque`: the parameter files of params.py, passed as `pretrained_model_path`; only
  without them pyiqa's <pyiqa>/niqe_modelparameters.mat or brisque_svm_weights.pth;
- `lpips` (v0.1, AlexNet): torchvision's ImageNet AlexNet, `<torch hub dir>/checkpoints/alexnet-owt-*.pth`
  (`AlexNet_Weights.IMAGENET1K_V1`, which pyiqa's LPIPS loads first), then <pyiqa>/LPIPS_v0.1_alex-*.pth;
- `dists`: torchvision's ImageNet VGG16, `<torch hub dir>/checkpoints/vgg16-*.pth`
  (`VGG16_Weights.IMAGENET1K_V1`), then <pyiqa>/DISTS_weights-*.pth;
- `piqe`: nothing.

A missing file is downloaded here, into the place its loader reads, with every socket operation
bounded by FETCH_TIMEOUT_S, if the network is there: one short request to the Hugging Face hub
decides it, or HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 declares it absent. Without network the
metric is unavailable, with the missing paths and the command that fetches them:

    python -m coz_train.image_quality --fetch-weights musiq maniqa clipiqa lpips dists

So pyiqa, built only once its files are in place, never downloads one, and nothing here changes the
socket module or a library's settings. A file these lists miss (another pyiqa version) would still
be downloaded by pyiqa itself, without these bounds; offline it fails and is reported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coz_train.image_quality.metric import MetricUnavailable, first_line

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # one request to the weights host decides whether downloads are tried
FETCH_TIMEOUT_S = 30.0  # per socket operation of a weights download (not the whole download)
CLI = "python -m coz_train.image_quality"
DOWNLOADED = ("musiq", "maniqa", "clipiqa", "lpips", "dists")  # the metrics whose weights only a download provides


def offline_reason() -> str | None:
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


def download(url: str, target: Path, sha256: str | None = None) -> Path:
    """url -> target, written under a temporary name and renamed once complete (and checked, given a sha256)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}.")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class WeightFile:
    """A file its loader reads from `path`; downloaded from `url` when it is not there."""

    path: Path
    url: str
    sha256: str | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    def cached(self) -> bool:
        return self.path.is_file()

    def fetch(self) -> Path:
        return download(self.url, self.path, self.sha256)


@dataclass(frozen=True)
class HubFile:
    """A file the Hugging Face hub client reads from its cache (how timm loads pretrained weights)."""

    repo_id: str
    filename: str

    @property
    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.filename)

    @property
    def where(self) -> str:
        from huggingface_hub import constants

        return f"{self.repo_id}/{self.filename} in the Hugging Face cache {constants.HF_HUB_CACHE}"

    def cached(self) -> bool:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(self.repo_id, self.filename), str)

    def fetch(self) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo_id, self.filename))  # the hub client's own timeouts


def _pyiqa_file(url: str) -> WeightFile:
    """A file pyiqa's load_file_from_url keeps under the URL's base name in its cache."""
    from pyiqa.utils import download_util

    return WeightFile(Path(download_util.DEFAULT_CACHE_DIR) / os.path.basename(urllib.parse.urlparse(url).path), url)


def _torchvision_file(url: str) -> WeightFile:
    """A torchvision model's weights, where `torch.hub.load_state_dict_from_url` keeps them."""
    import torch.hub

    return WeightFile(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path), url)


def weight_files(name: str, has_params: bool = True) -> list[WeightFile | HubFile]:
    """The files pyiqa loads when it builds our metric `name`; `has_params`: niqe/brisque get params.py's file."""
    if name == "musiq":
        from pyiqa.archs import musiq_arch

        return [_pyiqa_file(musiq_arch.default_model_urls["koniq10k"])]
    if name == "maniqa":
        from pyiqa.archs import maniqa_arch
        from timm.models import get_pretrained_cfg

        vit = get_pretrained_cfg("vit_base_patch8_224")  # the backbone MANIQA builds with pretrained=True
        return [HubFile(vit.hf_hub_id, "model.safetensors"), _pyiqa_file(maniqa_arch.default_model_urls["pipal"])]
    if name == "clipiqa":
        import torch.hub
        from pyiqa.archs import clip_model

        url = clip_model._MODELS["RN50"]  # .../<sha256>/RN50.pt, read from <torch hub dir>/clip
        return [WeightFile(Path(torch.hub.get_dir()) / "clip" / os.path.basename(url), url, url.split("/")[-2])]
    if name in ("lpips", "dists"):
        from pyiqa.archs import dists_arch, lpips_arch
        from torchvision.models import AlexNet_Weights, VGG16_Weights

        if name == "lpips":  # pyiqa's `lpips`: LPIPS(net="alex", version="0.1")
            trunk, url = AlexNet_Weights.IMAGENET1K_V1.url, lpips_arch.default_model_urls["0.1_alex"]
        else:
            trunk, url = VGG16_Weights.IMAGENET1K_V1.url, dists_arch.default_model_urls["url"]
        return [_torchvision_file(trunk), _pyiqa_file(url)]
    if name in ("niqe", "brisque") and not has_params:
        from pyiqa.archs import brisque_arch, niqe_arch

        return [_pyiqa_file((niqe_arch if name == "niqe" else brisque_arch).default_model_urls["url"])]
    return []


def ensure_weights(files: list[WeightFile | HubFile], is_offline: Callable[[], str | None], command: str) -> None:
    """Every file in place, downloaded now where missing and the network is there; else MetricUnavailable
    naming the missing files and `command`, which fetches them."""
    missing = [file for file in files if not file.cached()]
    if not missing:
        return
    why = is_offline()
    if why is not None:
        raise MetricUnavailable(f"weights not cached: missing {', '.join(f.where for f in missing)}; {why}, so "
                                f"nothing was downloaded; fetch them where there is network with `{command}`")
    for file in missing:
        try:
            log.info("downloading %s to %s", file.url, file.where)
            file.fetch()
        except Exception as error:
            raise MetricUnavailable(f"weights could not be downloaded: {file.url} ({first_line(error)}); "
                                    f"missing {file.where}") from error
