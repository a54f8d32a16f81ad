"""Finding and validating source images.

Every image goes through `load_rgb`: unreadable or corrupt files, decompression bombs and (by
config) images too small are skipped with the reason recorded, never silently dropped; grey,
palette, RGBA and 16-bit images are converted to 8-bit RGB.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class NoUsableImagesError(RuntimeError):
    pass


@dataclass
class SkipReport:
    """Which inputs were skipped and why; logged once after a scan."""

    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, source: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, f"{source}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in self.skipped.items()]
        return "; ".join(parts) if parts else "none"


def list_image_files(image_dir: str | Path) -> list[Path]:
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.image_dir='{image_dir}' is not a folder: point data.image_dir at a folder of images.")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and float are rescaled, alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB") if image.mode != "RGB" else image


def load_rgb(
    source: str | Path | Image.Image,
    name: str,
    min_short_side: int,
    small_images: str,
    max_pixels: int,
    report: SkipReport,
) -> Image.Image | None:
    """Open and validate one image; None (and a recorded reason) when it cannot be used."""
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                image = source
                if image.width * image.height > max_pixels:
                    raise Image.DecompressionBombError(f"{image.width * image.height} pixels")
            else:
                with Image.open(source) as opened:
                    opened.load()
                    image = opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        report.skip(name, "too large", f"{err}; over data.max_image_pixels={max_pixels} (raise it if the file is trusted)")
        return None
    except (OSError, ValueError, SyntaxError) as err:
        report.skip(name, "unreadable", f"{type(err).__name__}: {err}")
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    image = to_rgb8(image)
    if min(image.size) < min_short_side and small_images == "skip":
        report.skip(name, "too small", f"{image.size[0]}x{image.size[1]} < data.process_size={min_short_side}")
        return None
    return image


def shipped_images(names: list[str]) -> list[tuple[str, Image.Image]]:
    """Real photographs that ship inside scikit-image (no download)."""
    from skimage import data as skdata

    images = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            raise ValueError(f"data.shipped_images: '{name}' is not an image in skimage.data.")
        images.append((f"skimage:{name}", Image.fromarray(np.asarray(loader()))))
    return images
