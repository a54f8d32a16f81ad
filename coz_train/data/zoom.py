"""Chain-of-Zoom geometry: the states a prompt VLM sees at each zoom step.

Inference (official `recursive_multiscale`): the input is resized so its short side is
`process_size` and centre-cropped to a square; then at every step the previous state is cropped
to 1/`scale` of each side and upscaled back to `process_size`. Training pairs are
(previous state, zoomed image) at depth k = 1..N. At inference the SR backbone makes the next
state from the zoomed image; here the configured upscaler does (bicubic by default), so the
VLM sees the same geometry and the same kind of blur it will see in an untrained chain.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom)

RESAMPLERS = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def resampler(name: str) -> Callable[[Image.Image, int], Image.Image]:
    if name not in RESAMPLERS:
        raise ValueError(f"data.upscaler='{name}' is not one of {sorted(RESAMPLERS)}.")
    mode = RESAMPLERS[name]
    return lambda image, size: image.resize((size, size), mode)


def start_state(image: Image.Image, process_size: int) -> Image.Image:
    """Resize the short side to process_size (Lanczos, as the official code) and centre-crop."""
    w, h = image.size
    ratio = process_size / min(w, h)
    new_w, new_h = max(process_size, round(w * ratio)), max(process_size, round(h * ratio))
    image = image.resize((new_w, new_h), Image.LANCZOS)
    left, top = (new_w - process_size) // 2, (new_h - process_size) // 2
    return image.crop((left, top, left + process_size, top + process_size))


def crop_box(size: int, scale: int, crop: str, rng: np.random.Generator | None) -> Box:
    """The window of one zoom step: 1/scale of each side, centred or uniformly random."""
    side = size // scale
    if crop == "center":
        left = top = (size - side) // 2
    elif crop == "random":
        if rng is None:
            raise ValueError("crop='random' needs a random generator")
        left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    else:
        raise ValueError(f"data.crop='{crop}' is not one of ['center', 'random'].")
    return left, top, left + side, top + side


def zoom_chain(
    start: Image.Image,
    depth: int,
    scale: int,
    crop: str,
    upscale: Callable[[Image.Image, int], Image.Image],
    rng: np.random.Generator | None = None,
) -> tuple[list[Image.Image], list[Box]]:
    """States [s_0, ..., s_depth] and the crop windows (in the previous state) that made them."""
    size = start.size[0]
    states, boxes = [start], []
    for _ in range(depth):
        box = crop_box(size, scale, crop, rng)
        states.append(upscale(states[-1].crop(box), size))
        boxes.append(box)
    return states, boxes
