"""Full-image Chain-of-Zoom (method `full`): each step upscales the WHOLE previous state, tile by tile.

The official full-image inference (github.com/bryanswkim/Chain-of-Zoom `inference_coz_full.py`, with
`OSEDiff_SD3_TEST_TILE.create_full_latent` / `decode_full_latent` in its `osediff_sd3.py`),
re-implemented here, not copied. One step k, from state k-1 (side n; state 0 = the eval's start
state, P x P; s = the backbone's scale; P = process_size):
1. The whole state is Lanczos-upscaled to s*n: the official SR input, and what the VLM's tile views
   are cut from.
2. Tiles (`tile_grid`): windows of `tile_size` px of state k-1 overlapping by `tile_overlap` px,
   stride = tile_size - tile_overlap, ceil((n - tile_size) / stride) + 1 per axis, the last one
   moved back to end at the border (the official grid). The defaults 128 / 32 px are the official
   latent_tiled_size 64 / latent_tiled_overlap 16 in SD3 latents (4 x 128 px = 512 px = 64 latents).
3. One prompt per tile (official: 16 tokens, `eval.full_image.max_new_tokens`), from the prompt
   source given [the start state (the whole image at P, the official `0_full.png` at every step),
   the tile's window of the Lanczos upscale (s * tile_size px, resized to P if that differs)].
4. Each tile through the backbone with its own prompt, the tiles blended with the official
   Gaussian weights (`gaussian_weights`; every position = the weighted mean of the tiles covering
   it, the weights of each position summing to 1):
   - a latent backbone (`LatentSRBackbone`: OSEDiff-SD3): the whole upscale is VAE-encoded once,
     each latent tile stepped (z - v) with its prompt, the tiles blended in latent space, the
     blended latent decoded once, as the official code (the VAE tiles through the backbone's
     `vae_tiling`: diffusers' tiled VAE, whose SD3 tiles are the official 1024 px / 128 latents);
   - any other backbone (Real-ESRGAN, the resamplers): each tile's window of state k-1 is upscaled
     by the backbone's own `upscale`, the output tiles blended in pixel space and rounded to 8 bits.
State k is the whole image at P * s^k px. So that a table column compares like with like, the
chain's `states[k]` is the window of the whole state that the other methods' state k shows (the
start's window W_k, the centre P/s^k by default, at P x P; `Chain.boxes` holds W_k, in the start);
the whole states are `whole[k]`. Where this differs from the
official script: docs/full-image.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from coz_train.data.zoom import Box
from coz_train.sr.backbones.base import LatentSRBackbone, SRBackbone
from coz_train.sr.chain import IN_START, Chain, PromptSource, zoom_windows

GAUSSIAN_VAR = 0.01  # the official `_make_gaussian`: a std of 0.1 tile side


@dataclass
class FullImageChain(Chain):
    """A `full` chain: whole[k] is state k (P * s^k px), states[k] its window shown by the other methods at s^k.

    tile_boxes[k-1] / tile_prompts[k-1]: step k's tiles in state k-1 (px) and their prompts; prompts[k-1] is the
    prompt of the tile nearest the centre of the window (what the chain figure prints under states[k])."""

    whole: list[Image.Image] = field(default_factory=list)
    tile_boxes: list[list[Box]] = field(default_factory=list)
    tile_prompts: list[list[str]] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        """whole-<k>.png (k >= 1; whole-0 is 0.png) and tiles.json: {"<k>": [{"box": [l, t, r, b], "prompt": ...}]}."""
        for k, state in enumerate(self.whole[1:], start=1):
            state.save(folder / f"whole-{k}.png")
        tiles = {
            str(k): [{"box": list(box), "prompt": prompt} for box, prompt in zip(boxes, prompts, strict=True)]
            for k, (boxes, prompts) in enumerate(zip(self.tile_boxes, self.tile_prompts, strict=True), start=1)
        }
        (folder / "tiles.json").write_text(json.dumps(tiles, indent=1))


def check_full_image(cfg: Any, process_size: int, scale: int, eval_steps: int) -> None:
    """The `eval.full_image` section against the eval geometry, before any model loads (ValueError naming the key)."""
    steps, tile, overlap, max_side = int(cfg.steps), int(cfg.tile_size), int(cfg.tile_overlap), int(cfg.max_side)
    if not 1 <= steps <= eval_steps:
        raise ValueError(
            f"eval.full_image.steps={steps}: give 1 <= steps <= eval.steps ({eval_steps}); the full "
            "states are scored at the same zoom scales as the other methods."
        )
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(
            f"eval.full_image.tile_size={tile} / tile_overlap={overlap}: give tile_size >= 1 and "
            "0 <= tile_overlap < tile_size (px of the previous state; official 128 / 32)."
        )
    if tile > process_size:
        raise ValueError(
            f"eval.full_image.tile_size={tile} is larger than the start state (eval.process_size="
            f"{process_size}): lower eval.full_image.tile_size (and tile_overlap)."
        )
    side = process_size * scale**steps
    if side > max_side:
        raise ValueError(
            f"eval.full_image.steps={steps} makes the last full state {side} x {side} px (eval.process_size x "
            f"eval.scale^steps), above eval.full_image.max_side={max_side}: each step multiplies the pixels by "
            f"{scale**2}. Lower eval.full_image.steps, or raise max_side if the memory allows."
        )
    if int(cfg.max_new_tokens) < 1:
        raise ValueError(f"eval.full_image.max_new_tokens={cfg.max_new_tokens}: give at least 1 (official 16).")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every stride (tile - overlap), the last moved back to end at `length`."""
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1  # ceil, as the official rows / cols
    return [min(i * stride, length - tile) for i in range(count)]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Box]:
    """The tiles of a width x height image, row by row (the official order)."""
    if tile > min(width, height):
        raise ValueError(f"a {tile} px tile does not fit a {width} x {height} image.")
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    return [(x, y, x + tile, y + tile) for y in ys for x in xs]


def gaussian_weights(side: int) -> np.ndarray:
    """[side, side] blending weights: the official Gaussian, std 0.1 * side, centred at (side - 1) / 2 on both axes."""
    offsets = (np.arange(side) - (side - 1) / 2) / side
    profile = np.exp(-(offsets**2) / (2 * GAUSSIAN_VAR)) / np.sqrt(2 * np.pi * GAUSSIAN_VAR)
    return np.outer(profile, profile)


class GaussianBlender:
    """Adds square tiles with Gaussian weights into a [C, H, W] canvas; `result()` divides by the summed weights."""

    def __init__(self, channels: int, height: int, width: int, tile: int, device: torch.device | str = "cpu"):
        self.tile = tile
        self.weights = torch.from_numpy(gaussian_weights(tile)).to(device, torch.float32)  # [t, t]
        self.total = torch.zeros(channels, height, width, device=device)  # [C, H, W]
        self.norm = torch.zeros(height, width, device=device)  # [H, W]

    def add(self, tiles: torch.Tensor, origins: Sequence[tuple[int, int]]) -> None:
        """tiles [B, C, t, t] with their (left, top) in the canvas."""
        t = self.tile
        if tiles.shape[-2:] != (t, t):
            raise ValueError(f"tiles of {tuple(tiles.shape[-2:])}, the blender takes {t} x {t}.")
        for tile, (x, y) in zip(tiles, origins, strict=True):
            self.total[:, y : y + t, x : x + t] += tile.float() * self.weights
            self.norm[y : y + t, x : x + t] += self.weights

    def result(self) -> torch.Tensor:
        """[C, H, W]: the weighted mean of the tiles at each position (an uncovered position is an error)."""
        if not bool((self.norm > 0).all()):
            raise ValueError("the tiles do not cover the whole canvas")
        return self.total / self.norm


def _batches(count: int, size: int) -> list[range]:
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


def tile_view(upscaled: Image.Image, box: Box, scale: int, size: int) -> Image.Image:
    """The tile's zoomed input, as the VLM sees it: its window of the Lanczos upscale, at size x size."""
    view = upscaled.crop(tuple(v * scale for v in box))
    return view if view.size == (size, size) else view.resize((size, size), Image.BICUBIC)


def check_latent_tiles(backbone: LatentSRBackbone, side: int, tile: int, overlap: int, scale: int) -> None:
    """Latent tiles need whole latents on the transformer's patch grid: refuse tile sizes that would not."""
    multiple, factor = backbone.latent_multiple, backbone.latent_factor
    if (tile * scale) % multiple or (overlap * scale) % factor or (side * scale) % multiple:
        raise ValueError(
            f"eval.full_image.tile_size={tile} / tile_overlap={overlap} (x eval.scale={scale}) do not fall on the "
            f"{backbone.name} latent grid: tile_size x scale and the state side x scale ({side} x {scale}) must be "
            f"multiples of {multiple} px, tile_overlap x scale a multiple of {factor} px (the defaults 128 / 32 are)."
        )


def blended_latents(
    backbone: LatentSRBackbone,
    upscaled: Image.Image,
    boxes: Sequence[Box],
    prompts: Sequence[str],
    scale: int,
    batch_size: int,
) -> torch.Tensor:
    """The official latent path without the decode: the upscale encoded once, each tile stepped with its prompt,
    blended. boxes are in the previous state's px; -> [1, C, H/f, W/f]."""
    f = backbone.latent_factor
    z = backbone.encode_latents([upscaled])  # [1, C, h, w]
    t = (boxes[0][2] - boxes[0][0]) * scale // f
    blender = GaussianBlender(z.shape[1], z.shape[2], z.shape[3], t, z.device)
    for batch in _batches(len(boxes), batch_size):
        origins = [(boxes[i][0] * scale // f, boxes[i][1] * scale // f) for i in batch]
        tiles = torch.cat([z[:, :, y : y + t, x : x + t] for x, y in origins])  # [B, C, t, t]
        blender.add(backbone.denoise_latents(tiles, [prompts[i] for i in batch]), origins)
    return blender.result()[None]


def pixel_step(
    backbone: SRBackbone, state: Image.Image, boxes: Sequence[Box], prompts: Sequence[str], batch_size: int
) -> Image.Image:
    """Each tile's window of `state` through `backbone.upscale` with its prompt, blended in pixel space."""
    s, t = backbone.scale, boxes[0][2] - boxes[0][0]
    blender = GaussianBlender(3, state.height * s, state.width * s, t * s)
    for batch in _batches(len(boxes), batch_size):
        outputs = backbone.upscale([state.crop(boxes[i]) for i in batch], [prompts[i] for i in batch])
        arrays = np.stack([np.asarray(out.convert("RGB")) for out in outputs])  # [B, t*s, t*s, 3]
        blender.add(torch.from_numpy(arrays).permute(0, 3, 1, 2), [(boxes[i][0] * s, boxes[i][1] * s) for i in batch])
    pixels = blender.result().round_().clamp_(0, 255).to(torch.uint8)  # [3, H, W]
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def _nearest_tile(boxes: Sequence[Box], point: tuple[float, float]) -> int:
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    return min(range(len(boxes)), key=lambda i: (centres[i][0] - point[0]) ** 2 + (centres[i][1] - point[1]) ** 2)


def full_image_chains(
    starts: list[Image.Image],
    backbone: SRBackbone,
    prompt_source: PromptSource,
    method: str,
    scale: int,
    steps: int,
    tile_size: int,
    tile_overlap: int,
    batch_size: int = 4,
    decode_shift: bool = False,
    windows: Sequence[Sequence[Box]] | None = None,
) -> list[FullImageChain]:
    """The full-image chain of every start. `windows[i][k-1]`: the region of start i that states[k] shows, in the
    start's px (default: the centre, `zoom_windows`, as every other method), recorded as the chain's boxes;
    `decode_shift`: a latent backbone adds its VAE shift factor back."""
    if scale != backbone.scale:
        raise ValueError(f"{method} needs eval.scale ({scale}) equal to the backbone's scale ({backbone.scale}).")
    latent = isinstance(backbone, LatentSRBackbone)
    chains = []
    for i, start in enumerate(starts):
        size = start.width
        shown = list(windows[i])[:steps] if windows is not None else zoom_windows(size, scale, steps)
        chain = FullImageChain(method, [start], boxes=shown, boxes_in=IN_START, whole=[start])
        for k, window in enumerate(shown, start=1):
            state = chain.whole[-1]
            boxes = tile_grid(state.width, state.height, tile_size, tile_overlap)
            upscaled = state.resize((state.width * scale, state.height * scale), Image.LANCZOS)
            prompts: list[str] = []
            for batch in _batches(len(boxes), batch_size):  # the views of one batch at a time: step 2 has 441 tiles
                written = prompt_source([[start, tile_view(upscaled, boxes[i], scale, size)] for i in batch])
                if len(written) != len(batch):
                    raise ValueError(
                        f"{method}: the prompt source wrote {len(written)} prompts for {len(batch)} tiles."
                    )
                prompts += written
            if latent:
                check_latent_tiles(backbone, state.width, tile_size, tile_overlap, scale)  # type: ignore[arg-type]
                z = blended_latents(backbone, upscaled, boxes, prompts, scale, batch_size)  # type: ignore[arg-type]
                whole = backbone.decode_latents(z, shift=decode_shift)[0]  # type: ignore[attr-defined]
            else:
                whole = pixel_step(backbone, state, boxes, prompts, batch_size)
            zoom = scale ** (k - 1)  # px of state k-1 per start px
            centre = ((window[0] + window[2]) / 2 * zoom, (window[1] + window[3]) / 2 * zoom)
            chain.whole.append(whole)
            chain.states.append(whole.crop(tuple(v * scale**k for v in window)))
            chain.tile_boxes.append(boxes)
            chain.tile_prompts.append(prompts)
            chain.prompts.append(prompts[_nearest_tile(boxes, centre)])
        chains.append(chain)
    return chains


def whole_references(original: Image.Image, process_size: int, scale: int, steps: int) -> list[Image.Image | None]:
    """Ground truth for the whole states 1..steps: the original as the start at P * s^k px where it has the pixels."""
    from coz_train.data.zoom import start_state

    sides = [process_size * scale**k for k in range(1, steps + 1)]
    return [start_state(original, side) if min(original.size) >= side else None for side in sides]
