"""The two-image critic prompts of the InternVL2.5 equality test, and their images (pure arithmetic, no files)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# (width, height) of [wide view, zoom] and the candidate prompt: 5+7, 3+1 and 7+1 tiles with max_tiles=6
CASES = [
    (((700, 700), (300, 200)), "a cat on a wooden fence"),
    (((1000, 500), (448, 448)), "fur, sharp edges"),
    (((512, 384), (640, 427)), "sky"),
]
INSTRUCTION = ('A prompt was written to describe the second image: "{prompt}". Rate it. Answer with a single '
               "integer from 0 to {score_max}, and nothing else.")
SCORE_MAX = 100
MAX_NEW_TOKENS = 8


def pattern(width: int, height: int, k: int) -> Image.Image:
    """A deterministic RGB test pattern (stripes, a gradient and a checkerboard that differ with k)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * (k + 3) + y * (2 * k + 5)) % 256
    g = ((x // (8 + k)) + (y // (8 + k))) % 2 * 200 + (x * 255 // max(1, width - 1)) % 56
    b = (x * y // (97 + 13 * k)) % 256
    return Image.fromarray(np.stack([r, g, b], axis=-1).astype(np.uint8), "RGB")


def case_images(index: int) -> list[Image.Image]:
    sizes, _ = CASES[index]
    return [pattern(w, h, 2 * index + j) for j, (w, h) in enumerate(sizes)]


def question(text: str) -> str:
    """The question `chat()` gets: image headers, then the critic's instruction for this candidate."""
    return "Image-1: <image>\nImage-2: <image>\n" + INSTRUCTION.format(prompt=text, score_max=SCORE_MAX)
