"""The SR-quality reward's arithmetic: a metric value mapped to [0, 1], agreement with the wider view, the mix.

Mapping (`unit_score`): each no-reference metric has a fixed range [lo, hi] (`METRIC_RANGES`, or
`rewards.sr_quality.range`); a higher-is-better metric scores (x - lo) / (hi - lo), a lower-is-better one
(NIQE, BRISQUE, PIQE: its sign turned) (hi - x) / (hi - lo), clipped to [0, 1]. A fixed range, not a
per-batch normalisation, so a score means the same at every step and the reward's mean is a learning curve.
The defaults are the published score ranges of the pyiqa models (MUSIQ-KonIQ ~0..~100, CLIPIQA and
MANIQA-PIPAL ~0..~1, PIQE 0..100, BRISQUE ~0..~150), except NIQE: pyiqa quotes ~0..~100, but what an SR
reward must tell apart lies far lower (pyiqa NIQE here, 512 px: four scikit-image photographs 3.1..5.1, a
bicubic 4x zoom 7.1, 16x 12.8, Gaussian noise sigma 20 on a photograph 9.1, uniform noise 31), so 0..20.

Agreement with the wider view (`low_frequency_error`, `agreement`): the SR output of a crop should look, seen
from afar, like that crop of the previous state. The output (s x the crop's side) is box-downsampled back to
the crop's size (each pixel the mean of an s x s block: only what the wider view can see survives) and compared
with the crop: e = mean |down(output) - crop| over pixels and RGB channels, values in [0, 1]. Texture the wider
view cannot see averages out; texture that changes the colours or shapes it does see raises e. The agreement
is 1 - min(1, e / tolerance): 1 for an output consistent with the previous state, 0 from e = tolerance on.

Mix (`combine`): the weighted mean of the parts that are on (iqa with weight 1, agreement with
`reference_weight`, the critic judge with `critic_weight`), so the reward stays in [0, 1]. With the reference
on this is the IQA score less the penalty reference_weight / (1 + reference_weight) * min(1, e / tolerance),
rescaled: a disagreement costs the same whatever the metric says. A part with no score for a candidate (NIQE of
a flat output, an unparsable critic answer) makes that candidate's reward None, never a number made without it.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# metric -> (lo, hi) of its fixed range; the direction comes from the metric itself (Metric.higher_is_better)
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "niqe": (0.0, 20.0),
    "brisque": (0.0, 150.0),
    "piqe": (0.0, 100.0),
    "musiq": (0.0, 100.0),
    "maniqa": (0.0, 1.0),
    "clipiqa": (0.0, 1.0),
}


def unit_score(value: float, lo: float, hi: float, higher_is_better: bool) -> float | None:
    """A metric value in [0, 1] by its fixed range (see the module docstring); None for an undefined value."""
    if not math.isfinite(value):
        return None
    unit = (value - lo) / (hi - lo) if higher_is_better else (hi - value) / (hi - lo)
    return min(1.0, max(0.0, unit))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0  # [H, W, 3]


def low_frequency_error(output: Image.Image, crop: Image.Image) -> float:
    """Mean |box-downsampled output - crop| in [0, 1]: how much of the SR output the wider view contradicts."""
    if output.width % crop.width or output.height % crop.height:
        raise ValueError(f"The SR output {output.size} is not a whole multiple of its input crop {crop.size}.")
    down = output.convert("RGB").resize(crop.size, Image.BOX)
    return float(np.abs(_pixels(down) - _pixels(crop)).mean())


def agreement(error: float, tolerance: float) -> float:
    """1 - min(1, error / tolerance): 1 when the output agrees with the wider view, 0 from error = tolerance on."""
    return 1.0 - min(1.0, error / tolerance)


def combine(parts: dict[str, list[float | None]], weights: dict[str, float]) -> list[float | None]:
    """Per candidate, the weighted mean of the parts (all lists of one length); None where any part is None."""
    total = sum(weights[name] for name in parts)
    rows = zip(*parts.values(), strict=True)
    return [None if any(v is None for v in row) else sum(weights[n] * v for n, v in zip(parts, row, strict=True)) / total
            for row in rows]
