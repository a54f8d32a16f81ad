"""Cross-scale consistency of a zoom chain (after OracleZoom, arXiv 2609.06490): does each state agree with
the wider view it was made from, and does the deepest state agree with the ground truth?

Per chain of N steps (P = process_size, s = scale), for every metric m of `eval.consistency_metrics`:

- `consistency_<m>` at zoom s^k, k = 1..N: state k, downsampled by s (bicubic, antialiased) to
  P/s px, against what it was made from at that size. For the recursive chains that is the P/s crop
  of state k-1 the backbone got (`Chain.boxes`, in state k-1); for `onestep`, `nearest` and
  `bicubic`, which make every state from the start, it is the start's window W_k (P/s^k px)
  bicubic-resized to P/s px: the same region, at the size the recursive chains compare at. At k = 1
  both are the same crop of the start. The bicubic chain agrees almost exactly (its states are
  resizes of the start); an SR state that invents content where the wider view shows otherwise
  scores worse.
- `projected_<m>`, reported at the deepest zoom s^N: state N downsampled to the last zoom s^j that
  has a ground truth (`reference_states`: the original has the pixels), i.e. to the P/s^(N-j) px that
  its region covers there, against that region of the ground truth. No ground truth at any zoom: no
  value. A region smaller than a metric takes (SSIM 11 px, LPIPS 31 px; at P = 512, N = 4 and only
  a 4x ground truth the region is 8 px) gives no value for that metric, with one warning per run.

The values are scores like any other (method, scale, metric, value), so they land in results.csv
and results.md; `coz_train.image_quality.higher_is_better` knows each name's direction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from PIL import Image

from coz_train.eval.record import Score
from coz_train.image_quality import Metric, min_side
from coz_train.sr.chain import IN_START, Chain

log = logging.getLogger(__name__)

CONSISTENCY, PROJECTED = "consistency_", "projected_"


def resized(image: Image.Image, side: int) -> Image.Image:
    """`image` resized to side x side, bicubic (Pillow widens the kernel when it shrinks: antialiased)."""
    return image if image.size == (side, side) else image.resize((side, side), Image.BICUBIC)


def sources(chain: Chain) -> list[Image.Image]:
    """For k = 1..N, what state k was made from, at P/s px (the side of step 1's window)."""
    if len(chain.boxes) != len(chain.states) - 1:
        raise ValueError(
            f"{chain.method}: {len(chain.boxes)} crop windows for {len(chain.states) - 1} steps; "
            "every chain builder records one per step (Chain.boxes)."
        )
    side = chain.boxes[0][2] - chain.boxes[0][0]
    if chain.boxes_in == IN_START:
        return [resized(chain.states[0].crop(box), side) for box in chain.boxes]
    return [state.crop(box) for state, box in zip(chain.states[:-1], chain.boxes, strict=True)]


def _pixel_box(box: Sequence[float], where: str) -> tuple[int, int, int, int]:
    rounded = tuple(round(v) for v in box)
    if any(abs(v - r) > 1e-6 for v, r in zip(box, rounded, strict=True)):
        raise ValueError(f"{where}: the deepest window {tuple(box)} is not on the ground truth's pixel grid.")
    return rounded  # type: ignore[return-value]


def projection(chain: Chain, references: Sequence[Image.Image | None]) -> tuple[Image.Image, Image.Image] | None:
    """(state N downsampled to its region in the deepest ground truth, that region), or None without one."""
    referenced = [j for j, reference in enumerate(references, start=1) if reference is not None]
    if not referenced:
        return None
    j, windows = referenced[-1], chain.windows()
    reference, deepest = references[j - 1], windows[-1]
    left, top, right, _ = windows[j - 1]
    unit = reference.width / (right - left)  # ground-truth pixels per start pixel
    box = _pixel_box(
        [(deepest[0] - left) * unit, (deepest[1] - top) * unit, (deepest[2] - left) * unit, (deepest[3] - top) * unit],
        chain.method,
    )
    target = reference.crop(box)
    return resized(chain.states[-1], target.width), target


class ConsistencyScores:
    """The consistency and projection scores of chains, with `metrics` (full-reference, by metric name)."""

    def __init__(self, metrics: dict[str, Metric]):
        not_full = [name for name, metric in metrics.items() if not metric.full_reference]
        if not_full:
            raise ValueError(f"eval.consistency_metrics: {not_full} are not full-reference metrics.")
        self.metrics = metrics
        self.warned: set[str] = set()

    def _value(self, name: str, image: Image.Image, reference: Image.Image, result: str) -> float | None:
        need = min_side(name)
        if min(reference.size) < need:
            if result not in self.warned:
                self.warned.add(result)
                log.warning(
                    "%s: no value where the compared region is under %d px (here %s; %s needs %d px)",
                    result,
                    need,
                    reference.size,
                    name,
                    need,
                )
            return None
        return float(self.metrics[name](image, reference))

    def __call__(self, chains: list[Chain], references: Sequence[Image.Image | None], scales: list[int]) -> list[Score]:
        """(method, scale, consistency_<m> / projected_<m>, value) of every chain that records its windows."""
        scores: list[Score] = []
        for chain in chains:
            if not self.metrics:
                break
            if not chain.boxes:  # a chain whose states are not crops of one another (the full-image chain)
                if chain.method not in self.warned:
                    self.warned.add(chain.method)
                    log.warning("%s records no crop windows: no consistency scores for it", chain.method)
                continue
            steps = len(chain.states) - 1
            for k, source in enumerate(sources(chain), start=1):
                state = resized(chain.states[k], source.width)
                for name in self.metrics:
                    value = self._value(name, state, source, CONSISTENCY + name)
                    if value is not None:
                        scores.append((chain.method, scales[k - 1], CONSISTENCY + name, value))
            pair = projection(chain, references[:steps])
            for name in self.metrics if pair is not None else []:
                value = self._value(name, *pair, PROJECTED + name)
                if value is not None:
                    scores.append((chain.method, scales[steps - 1], PROJECTED + name, value))
        return scores
