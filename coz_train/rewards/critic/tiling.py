"""InternVL's dynamic tiling of an image into 448-px tiles, as its checkpoints were trained on.

The image is resized to the grid of `cols x rows` tiles (`min_tiles <= cols * rows <= max_tiles`)
whose aspect ratio is closest to the image's, cut into those tiles, and, when there is more than
one, followed by a thumbnail of the whole image. Among grids that are equally close (the same
aspect ratio at different sizes, such as 1x1 and 2x2 for a square image), a larger grid wins when
the image covers more than half of its pixel area: a 700x700 image makes a 2x2 grid + thumbnail
(5 tiles), a 512x512 one a single tile. This is InternVL's `dynamic_preprocess` /
`find_closest_aspect_ratio` rule, written here because the model's tiling lives in its remote code
and the native `-hf` processors tile with a different rule.
"""

from __future__ import annotations

from typing import Any

import torch

TILE = 448
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, InternViT's normalisation


def candidate_grids(max_tiles: int, min_tiles: int = 1) -> list[tuple[int, int]]:
    """Every (cols, rows) with min_tiles <= cols * rows <= max_tiles, smallest area first."""
    grids = {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles}
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def tile_grid(width: int, height: int, max_tiles: int, min_tiles: int = 1, tile: int = TILE) -> tuple[int, int]:
    """The (cols, rows) grid InternVL picks for a width x height image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"Cannot tile an image of size {width}x{height}.")
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(max_tiles, min_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)  # equally close and the image fills over half of it: the larger grid
    return best


def tile_count(width: int, height: int, max_tiles: int, thumbnail: bool = True, min_tiles: int = 1) -> int:
    """How many tiles (thumbnail included) an image of this size becomes."""
    cols, rows = tile_grid(width, height, max_tiles, min_tiles)
    return cols * rows + (1 if thumbnail and cols * rows > 1 else 0)


def tile_images(image: Any, max_tiles: int, thumbnail: bool = True, min_tiles: int = 1, tile: int = TILE) -> list:
    """The PIL tiles of an image in row-major order, then the thumbnail when there is more than one tile."""
    image = image.convert("RGB")
    cols, rows = tile_grid(*image.size, max_tiles, min_tiles, tile)
    resized = image.resize((cols * tile, rows * tile))
    crops = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]
    if thumbnail and len(crops) > 1:
        crops.append(image.resize((tile, tile)))
    return crops


def tile_tensor(image: Any, max_tiles: int, thumbnail: bool = True) -> torch.Tensor:
    """The normalised tiles of one image, [tiles, 3, 448, 448] float32."""
    import torchvision.transforms.functional as F

    return torch.stack([F.normalize(F.to_tensor(c), MEAN, STD) for c in tile_images(image, max_tiles, thumbnail)])
