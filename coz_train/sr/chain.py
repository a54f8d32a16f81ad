"""Chain-of-Zoom inference: the zoom chain of every method, as the official inference modes.

Geometry (P = process_size, s = scale): the start state is the input resized to short side P and
centre-cropped (`coz_train.data.zoom.start_state`). For step k = 1..N:
- `nearest` / `bicubic`: the centre P/s^k crop of the start, resized to P.
- `onestep`: the centre P/s^k crop of the start through the backbone once, asking for a P x P
  output (the official one-step baseline: direct SR at the full zoom; the backbone brings the crop
  to its input size its own way, see `backbones.base`). Its prompt source sees one image, the
  crop's bicubic upscale to P: what the official code hands its DAPE tagger in this mode (the
  official code refuses VLM prompts here; a VLM source gets the single-image message).
- `recursive_multiscale` (CoZ): the centre P/s crop of state k-1 is the backbone's input; its
  bicubic upscale to P is the "zoomed" image; the prompt source sees [state k-1, zoomed] and
  writes the prompt; the backbone turns the crop and prompt into state k (P x P), optionally
  colour-fixed towards the zoomed image. The training data (`coz_train.data.chains`) builds its
  chains with this same function, passing its own crop windows (random crops) instead of the centre.
- `recursive`: the same chain, but the prompt source sees only [zoomed] (official `rec_type
  recursive`; a VLM gets the single-image message, `zoom_prompt(single_image=True)`).
Every method yields N + 1 states (state 0 = the start) and one prompt per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from coz_train.data.zoom import Box
from coz_train.sr.backbones.base import SRBackbone
from coz_train.sr.colorfix import apply_colorfix

# [[previous, zoomed], ...] (recursive_multiscale) or [[zoomed], ...] (recursive, onestep) -> one prompt per item
PromptSource = Callable[[list[list[Image.Image]]], list[str]]

RESAMPLE_METHODS = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}
PROMPTED_METHODS = ("onestep", "recursive", "recursive_multiscale", "full")  # results as <method>-<prompt source>
METHODS = ("nearest", "bicubic", *PROMPTED_METHODS)


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


def _upscale(backbone: SRBackbone, images: Sequence[Image.Image], prompts: list[str], batch_size: int,
             size: int | None = None) -> list[Image.Image]:
    outputs: list[Image.Image] = []
    for batch in _batched(list(range(len(images))), batch_size):
        outputs += backbone.upscale([images[i] for i in batch], [prompts[i] for i in batch], size=size)
    return outputs


def _null_prompts(items: list[list[Image.Image]]) -> list[str]:
    return [""] * len(items)


def _zoom(image: Image.Image, side: int, size: int) -> tuple[Image.Image, Image.Image]:
    """The centre `side` crop of image and its bicubic upscale to size x size (the "zoomed" image)."""
    crop = centre_crop(image, side)
    return crop, crop.resize((size, size), Image.BICUBIC)


def onestep_chains(
    starts: list[Image.Image],
    backbone: SRBackbone,
    scale: int,
    steps: int,
    prompt_source: PromptSource = _null_prompts,
    method: str = "onestep-null",
    batch_size: int = 4,
) -> list[Chain]:
    size = starts[0].width
    chains = [Chain(method, [start]) for start in starts]
    for k in range(1, steps + 1):
        crops, zoomed = zip(*(_zoom(start, size // scale**k, size) for start in starts), strict=True)
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

    `boxes[i][k]`: the crop window of step k + 1 in chain i's state k (default: the centre 1/scale)."""
    size = starts[0].width
    if scale != backbone.scale:
        raise ValueError(f"{method} needs eval.scale ({scale}) equal to the backbone's scale ({backbone.scale}).")
    chains = [Chain(method, [start]) for start in starts]
    for step in range(steps):
        if boxes is None:
            crops = [centre_crop(chain.states[-1], size // scale) for chain in chains]
        else:
            crops = [chain.states[-1].crop(tuple(box[step])) for chain, box in zip(chains, boxes, strict=True)]
        zoomed = [crop.resize((size, size), Image.BICUBIC) for crop in crops]
        views = [[z] if single_image else [c.states[-1], z] for c, z in zip(chains, zoomed, strict=True)]
        prompts = prompt_source(views)
        outputs = _upscale(backbone, crops, prompts, batch_size)
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
