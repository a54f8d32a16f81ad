"""Chain-of-Zoom inference: the zoom chain of every method, as the official inference modes.

Geometry (P = process_size, s = scale): the start state is the input resized to short side P and
centre-cropped (`coz_train.data.zoom.start_state`). For step k = 1..N:
- `nearest` / `bicubic`: the centre P/s^k crop of the start, resized to P.
- `onestep`: the centre P/s^k crop of the start through the backbone once, asking for a P x P
  output (the official one-step baseline: direct SR at the full zoom; the backbone brings the crop
  to its input size its own way, see `backbones.base`).
- `recursive_multiscale` (CoZ): the centre P/s crop of state k-1 is the backbone's input; its
  bicubic upscale to P is the "zoomed" image; the prompt source sees [state k-1, zoomed] and
  writes the prompt; the backbone turns the crop and prompt into state k (P x P), optionally
  colour-fixed towards the zoomed image. The training data (`coz_train.data.chains`) builds its
  chains with this same function, passing its own crop windows (random crops) instead of the centre.
Every method yields N + 1 states (state 0 = the start) and one prompt per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from coz_train.data.zoom import Box
from coz_train.eval.backbones.base import SRBackbone
from coz_train.eval.colorfix import apply_colorfix

PromptSource = Callable[[list[list[Image.Image]]], list[str]]  # [[previous, zoomed], ...] -> prompts

RESAMPLE_METHODS = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}
METHODS = ("nearest", "bicubic", "onestep", "recursive_multiscale")


@dataclass
class Chain:
    """One method's zoom chain on one image: states[0] is the start, states[k] the 4^k zoom."""

    method: str
    states: list[Image.Image] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    zoomed: list[Image.Image] = field(default_factory=list)  # recursive modes: zoomed[k-1] = bicubic crop of state k-1


def centre_crop(image: Image.Image, side: int) -> Image.Image:
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def check_geometry(process_size: int, scale: int, steps: int) -> None:
    if process_size % scale or process_size // scale**steps < 1:
        raise ValueError(
            f"eval.process_size={process_size} cannot be zoomed {steps} times by eval.scale={scale}: "
            f"the last crop would be {process_size / scale**steps:g} px. Lower eval.steps or raise eval.process_size."
        )


def resample_chain(start: Image.Image, method: str, scale: int, steps: int) -> Chain:
    size = start.width
    chain = Chain(method, [start], [""] * steps)
    for k in range(1, steps + 1):
        chain.states.append(centre_crop(start, size // scale**k).resize((size, size), RESAMPLE_METHODS[method]))
    return chain


def _batched(items: Sequence, batch_size: int) -> list[Sequence]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def onestep_chains(
    starts: list[Image.Image], backbone: SRBackbone, scale: int, steps: int, prompt: str = "", batch_size: int = 4
) -> list[Chain]:
    size = starts[0].width
    chains = [Chain("onestep", [start]) for start in starts]
    for k in range(1, steps + 1):
        crops = [centre_crop(start, size // scale**k) for start in starts]
        outputs: list[Image.Image] = []
        for batch in _batched(crops, batch_size):
            outputs += backbone.upscale(list(batch), [prompt] * len(batch), size=size)
        for chain, out in zip(chains, outputs, strict=True):
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
    boxes: Sequence[Sequence[Box]] | None = None,
) -> list[Chain]:
    """`boxes[i][k]`: the crop window of step k + 1 in chain i's state k (default: the centre 1/scale)."""
    size = starts[0].width
    if scale != backbone.scale:
        raise ValueError(f"recursive_multiscale needs eval.scale ({scale}) equal to the backbone's scale ({backbone.scale}).")
    chains = [Chain(method, [start]) for start in starts]
    for step in range(steps):
        if boxes is None:
            crops = [centre_crop(chain.states[-1], size // scale) for chain in chains]
        else:
            crops = [chain.states[-1].crop(tuple(box[step])) for chain, box in zip(chains, boxes, strict=True)]
        zoomed = [crop.resize((size, size), Image.BICUBIC) for crop in crops]
        prompts = prompt_source([[chain.states[-1], z] for chain, z in zip(chains, zoomed, strict=True)])
        outputs: list[Image.Image] = []
        for batch in _batched(list(range(len(chains))), batch_size):
            outputs += backbone.upscale([crops[i] for i in batch], [prompts[i] for i in batch])
        for chain, out, z, prompt in zip(chains, outputs, zoomed, prompts, strict=True):
            chain.states.append(apply_colorfix(colorfix, out, z))
            chain.prompts.append(prompt)
            chain.zoomed.append(z)
    return chains


def reference_states(original: Image.Image, process_size: int, scale: int, steps: int) -> list[Image.Image | None]:
    """Ground truth for states 1..N where the original has the pixels: [None] where it does not.

    State k shows the centre P/s^k of the start; the original holds that region at full detail
    when its short side is at least P*s^k: resize it to short side P*s^k (never upscaling),
    centre-crop the square, then the centre P crop is what a perfect zoom would show.
    """
    from coz_train.data.zoom import start_state

    references: list[Image.Image | None] = []
    for k in range(1, steps + 1):
        side = process_size * scale**k
        if min(original.size) < side:
            references.append(None)
            continue
        references.append(centre_crop(start_state(original, side), process_size))
    return references
