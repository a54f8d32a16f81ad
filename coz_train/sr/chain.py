"""Chain-of-Zoom inference: the zoom chain of every method, as the official inference modes.

Geometry (P = process_size, s = scale): the start state is the input resized to short side P and
centre-cropped (`coz_train.data.zoom.start_state`). Step k = 1..N zooms into a window W_k of the
start, P/s^k px wide (`zoom_windows`): by default the centre, as the official code; with a chosen
point (x, y) (fractions of the start, `eval.zoom_centre`) the window around that point, clamped
inside W_{k-1}. The point stays fixed in the start's coordinates and every window lies on the
start's pixel grid, so every method zooms into exactly the same region (at 256x on P = 512 the
window is 2 start pixels wide: the point lies within half a start pixel of its centre). For step k:
- `nearest` / `bicubic`: W_k of the start, resized to P.
- `onestep`: W_k of the start through the backbone once, asking for a P x P output (the official
  one-step baseline: direct SR at the full zoom; the backbone brings the crop to its input size its
  own way, see `backbones.base`). Its prompt source sees one image, the crop's bicubic upscale to P:
  what the official code hands its DAPE tagger in this mode (the official code refuses VLM prompts
  here; a VLM source gets the single-image message).
- `recursive_multiscale` (CoZ): the P/s crop of state k-1 that shows W_k (`step_boxes`; the centre
  P/s by default) is the backbone's input; its bicubic upscale to P is the "zoomed" image; the
  prompt source sees [state k-1, zoomed] and writes the prompt; the backbone turns the crop and
  prompt into state k (P x P), optionally colour-fixed towards the zoomed image. The training data
  (`coz_train.data.chains`) builds its chains with this same function, passing its own crop windows
  (random crops) instead.
- `recursive`: the same chain, but the prompt source sees only [zoomed] (official `rec_type
  recursive`; a VLM gets the single-image message, `zoom_prompt(single_image=True)`).
Every method yields N + 1 states (state 0 = the start) and one prompt per step, and records its
crop windows (`Chain.boxes`): in state k-1 for the recursive chains, in the start for the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from coz_train.data.zoom import Box
from coz_train.sr.backbones.base import SRBackbone
from coz_train.sr.colorfix import apply_colorfix

# [[previous, zoomed], ...] (recursive_multiscale) or [[zoomed], ...] (recursive, onestep) -> one prompt per item
PromptSource = Callable[[list[list[Image.Image]]], list[str]]
Centre = tuple[float, float]  # (x, y) as fractions 0..1 of the start state's width and height
Window = tuple[float, float, float, float]  # (left, top, right, bottom) in the start's pixels

RESAMPLE_METHODS = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}
PROMPTED_METHODS = ("onestep", "recursive", "recursive_multiscale", "full")  # results as <method>-<prompt source>
METHODS = ("nearest", "bicubic", *PROMPTED_METHODS)
IMAGE_CENTRE: Centre = (0.5, 0.5)
IN_PREVIOUS, IN_START = "previous", "start"  # where Chain.boxes lie


@dataclass
class Chain:
    """One method's zoom chain on one image: states[0] is the start, states[k] the s^k zoom."""

    method: str
    states: list[Image.Image] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    zoomed: list[Image.Image] = field(default_factory=list)  # recursive modes: zoomed[k-1] = bicubic crop of state k-1
    boxes: list[Box] = field(default_factory=list)  # boxes[k-1]: the crop window state k was made from
    boxes_in: str = IN_PREVIOUS  # IN_PREVIOUS: boxes[k-1] lies in states[k-1]; IN_START: in states[0]

    def windows(self) -> list[Window]:
        """Each step's window in the start's pixels (composed through the states for the recursive chains)."""
        if self.boxes_in == IN_START:
            return [tuple(float(v) for v in box) for box in self.boxes]  # type: ignore[misc]
        size = self.states[0].width
        left, top, side = 0.0, 0.0, float(size)
        windows: list[Window] = []
        for box in self.boxes:
            unit = side / size  # one pixel of the previous state, in start pixels
            left, top, side = left + box[0] * unit, top + box[1] * unit, (box[2] - box[0]) * unit
            windows.append((left, top, left + side, top + side))
        return windows


def centre_crop(image: Image.Image, side: int) -> Image.Image:
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def check_geometry(process_size: int, scale: int, steps: int) -> None:
    if process_size % scale**steps:
        raise ValueError(
            f"eval.process_size={process_size} cannot be zoomed {steps} times by eval.scale={scale}: "
            f"the last crop would be {process_size / scale**steps:g} px, and every method zooms into the same "
            f"whole-pixel windows of the start. Lower eval.steps or make eval.process_size a multiple of "
            f"{scale**steps} (eval.scale ** eval.steps)."
        )


def check_centre(centre: Sequence[float], where: str) -> Centre:
    """(x, y) fractions in [0, 1], or ValueError naming `where` (the config key or the file and row)."""
    if len(centre) != 2:
        raise ValueError(f"{where}: a zoom centre is [x, y] (two fractions of the start image), got {list(centre)}.")
    x, y = (float(v) for v in centre)
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):  # NaN fails too
        raise ValueError(
            f"{where}: zoom centre ({x:g}, {y:g}) is outside the image: x and y are fractions of the "
            "start image's width and height, 0..1 (0.5, 0.5 = the centre)."
        )
    return x, y


def _place(point: float, side: int, low: int, high: int) -> int:
    """The left (top) of a `side` window around `point`, rounded half down, kept inside [low, high]."""
    return min(max(math.ceil(point - side / 2 - 0.5), low), high - side)


def zoom_windows(size: int, scale: int, steps: int, centre: Centre | None = None) -> list[Box]:
    """W_1..W_N in the start's pixels: W_k is size/scale^k wide, around the point, clamped inside W_{k-1}.

    The default (the image centre) gives the official centre crops: (size - side) // 2."""
    x, y = centre if centre is not None else IMAGE_CENTRE
    px, py = x * size, y * size
    windows: list[Box] = []
    left, top, right, bottom = 0, 0, size, size
    for k in range(1, steps + 1):
        side = size // scale**k
        left, top = _place(px, side, left, right), _place(py, side, top, bottom)
        right, bottom = left + side, top + side
        windows.append((left, top, right, bottom))
    return windows


def step_boxes(windows: Sequence[Box], size: int, scale: int) -> list[Box]:
    """Each window W_k in the pixels of state k-1 (which shows W_{k-1} at size px): the recursive chains' crops."""
    boxes: list[Box] = []
    previous: Box = (0, 0, size, size)
    for k, window in enumerate(windows, start=1):
        unit = scale ** (k - 1)  # state k-1 pixels per start pixel
        left, top = (window[0] - previous[0]) * unit, (window[1] - previous[1]) * unit
        boxes.append((left, top, left + size // scale, top + size // scale))
        previous = window
    return boxes


def resample_chain(
    start: Image.Image, method: str, scale: int, steps: int, windows: Sequence[Box] | None = None
) -> Chain:
    size = start.width
    windows = list(windows) if windows is not None else zoom_windows(size, scale, steps)
    chain = Chain(method, [start], [""] * steps, boxes=windows, boxes_in=IN_START)
    for window in windows:
        chain.states.append(start.crop(window).resize((size, size), RESAMPLE_METHODS[method]))
    return chain


def _batched(items: Sequence, batch_size: int) -> list[Sequence]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _upscale(
    backbone: SRBackbone, images: Sequence[Image.Image], prompts: list[str], batch_size: int, size: int | None = None
) -> list[Image.Image]:
    outputs: list[Image.Image] = []
    for batch in _batched(list(range(len(images))), batch_size):
        outputs += backbone.upscale([images[i] for i in batch], [prompts[i] for i in batch], size=size)
    return outputs


def _null_prompts(items: list[list[Image.Image]]) -> list[str]:
    return [""] * len(items)


def onestep_chains(
    starts: list[Image.Image],
    backbone: SRBackbone,
    scale: int,
    steps: int,
    prompt_source: PromptSource = _null_prompts,
    method: str = "onestep-null",
    batch_size: int = 4,
    windows: Sequence[Sequence[Box]] | None = None,
) -> list[Chain]:
    """`windows[i][k]`: the window of step k + 1 in chain i's start (default: the centre, `zoom_windows`)."""
    size = starts[0].width
    if windows is None:
        windows = [zoom_windows(size, scale, steps)] * len(starts)
    chains = [
        Chain(method, [start], boxes=list(w), boxes_in=IN_START) for start, w in zip(starts, windows, strict=True)
    ]
    for k in range(1, steps + 1):
        crops = [chain.states[0].crop(chain.boxes[k - 1]) for chain in chains]
        zoomed = [crop.resize((size, size), Image.BICUBIC) for crop in crops]
        prompts = prompt_source([[z] for z in zoomed])
        outputs = _upscale(backbone, crops, prompts, batch_size, size=size)
        for chain, out, prompt in zip(chains, outputs, prompts, strict=True):
            chain.states.append(out)
            chain.prompts.append(prompt)
    return chains


def recursive_chains(
    starts: list[Image.Image],
    backbone: SRBackbone,
    prompt_source: PromptSource,
    method: str,
    scale: int,
    steps: int,
    colorfix: str = "none",
    batch_size: int = 4,
    single_image: bool = False,
    boxes: Sequence[Sequence[Box]] | None = None,
) -> list[Chain]:
    """The CoZ chain: `recursive_multiscale`, or `recursive` with single_image (the source sees only [zoomed]).

    `boxes[i][k]`: the crop window of step k + 1 in chain i's state k (default: the centre 1/scale;
    `step_boxes(zoom_windows(...))` for a chosen point)."""
    size = starts[0].width
    if scale != backbone.scale:
        raise ValueError(f"{method} needs eval.scale ({scale}) equal to the backbone's scale ({backbone.scale}).")
    if boxes is None:
        boxes = [step_boxes(zoom_windows(size, scale, steps), size, scale)] * len(starts)
    chains = [
        Chain(method, [start], boxes=[tuple(b) for b in box[:steps]]) for start, box in zip(starts, boxes, strict=True)
    ]
    for step in range(steps):
        crops = [chain.states[-1].crop(chain.boxes[step]) for chain in chains]
        zoomed = [crop.resize((size, size), Image.BICUBIC) for crop in crops]
        views = [[z] if single_image else [c.states[-1], z] for c, z in zip(chains, zoomed, strict=True)]
        prompts = prompt_source(views)
        outputs = _upscale(backbone, crops, prompts, batch_size)
        for chain, out, z, prompt in zip(chains, outputs, zoomed, prompts, strict=True):
            chain.states.append(apply_colorfix(colorfix, out, z))
            chain.prompts.append(prompt)
            chain.zoomed.append(z)
    return chains


def reference_states(
    original: Image.Image, process_size: int, scale: int, steps: int, windows: Sequence[Box] | None = None
) -> list[Image.Image | None]:
    """Ground truth for states 1..N where the original has the pixels: [None] where it does not.

    State k shows the window W_k of the start (`windows`, default the centre: `zoom_windows`); the
    original holds that region at full detail when its short side is at least P*s^k: resized to
    short side P*s^k (never upscaling) and centre-cropped to the square, it is the start s^k times
    larger, and W_k scaled by s^k is what a perfect zoom would show (P x P).
    """
    from coz_train.data.zoom import start_state

    windows = list(windows) if windows is not None else zoom_windows(process_size, scale, steps)
    references: list[Image.Image | None] = []
    for k, window in enumerate(windows, start=1):
        side = process_size * scale**k
        if min(original.size) < side:
            references.append(None)
            continue
        references.append(start_state(original, side).crop(tuple(v * scale**k for v in window)))
    return references
