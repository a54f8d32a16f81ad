"""Finding and validating source images.

Every image goes through `load_rgb`: unreadable or corrupt files, decompression bombs (also the
thin ones that only become huge once resized to the working size), extreme aspect ratios and (by
config) images too small are skipped with the reason recorded, never silently dropped; the EXIF
orientation is applied, as every viewer does; grey, palette, RGBA and 16-bit images are converted
to 8-bit RGB. Folders are walked following symbolic links (each real folder once).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_ASPECT_RATIO = 20.0  # longer side / shorter side; beyond it the centre square holds a sliver of the image


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
    """Image files under image_dir, following symbolic links to folders; a folder reached twice (a link loop,
    or two links to one folder) is walked once, and that is logged."""
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.image_dir='{image_dir}' is not a folder: point data.image_dir at a folder of images.")
    found, seen, repeated = [], set(), []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            repeated.append(folder)
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()
        found += [Path(folder, name) for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    if repeated:
        log.warning("data.image_dir='%s': %d folders reached again through links were walked once (e.g. %s)",
                    image_dir, len(repeated), repeated[0])
    return sorted(p for p in found if p.is_file())


def resized_pixels(width: int, height: int, process_size: int) -> int:
    """Pixels of the image once its short side is brought to process_size (what `zoom.start_state` allocates)."""
    ratio = process_size / min(width, height)
    return max(process_size, round(width * ratio)) * max(process_size, round(height * ratio))


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
    """Open and validate one image; None (and a recorded reason) when it cannot be used.

    The size checks use the header, before the pixels are decoded or any resize allocates."""
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                if source.width * source.height > max_pixels:
                    raise Image.DecompressionBombError(f"{source.width * source.height} pixels")
                if _unusable_shape(source.size, name, min_short_side, max_pixels, report):
                    return None
                image = ImageOps.exif_transpose(source)
            else:
                with Image.open(source) as opened:
                    if _unusable_shape(opened.size, name, min_short_side, max_pixels, report):
                        return None
                    opened.load()
                    image = ImageOps.exif_transpose(opened)  # a copy, turned as the camera was held
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


def _unusable_shape(size: tuple[int, int], name: str, process_size: int, max_pixels: int, report: SkipReport) -> bool:
    width, height = size
    if min(width, height) < 1:
        report.skip(name, "unreadable", f"{width}x{height} pixels")
        return True
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        report.skip(name, "extreme aspect ratio", f"{width}x{height} is over {MAX_ASPECT_RATIO:g}:1")
        return True
    resized = resized_pixels(width, height, process_size)
    if resized > max_pixels:
        report.skip(name, "too large", f"{width}x{height} would be {resized} pixels at short side {process_size}; "
                                       f"over data.max_image_pixels={max_pixels}")
        return True
    return False


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
