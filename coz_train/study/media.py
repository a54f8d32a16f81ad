"""The study's images, stored as `media/<id>.png` and addressed by id only.

An id is a salted hash of the PNG's bytes (16 hex digits): it says nothing about the condition, image or
scale, so a rater cannot tell conditions apart from URLs, and identical images are stored once. Images
taken from an eval run are copied (`study.media=copy`, a self-contained folder) or hard-linked
(`study.media=link`; a copy where the study is on another file system). Images made here (the
low-resolution reference, the zoomed crop a prompt was written from, anchors) are written as PNG; they show the
region of the input that the eval run's chain zoomed into (`runs.ChainFiles.windows`, the centre unless the run
set eval.zoom_centre / eval.zoom_centres).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from coz_train.study.runs import Box

log = logging.getLogger(__name__)
MEDIA_MODES = ("copy", "link")
MEDIA_ID = re.compile(r"^[0-9a-f]{16}$")


class MediaWriter:
    """Adds images to `<study>/media/` and remembers where each came from (`manifest.json`'s `media`)."""

    def __init__(self, study_dir: Path, salt: str, mode: str = "copy"):
        if mode not in MEDIA_MODES:
            raise ValueError(f"study.media={mode!r} must be one of {MEDIA_MODES}.")
        self.dir = study_dir / "media"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.salt = salt.encode()
        self.mode = mode
        self.entries: dict[str, dict[str, str]] = {}
        self._linked_warned = False

    def _id(self, data: bytes) -> str:
        return hashlib.sha256(self.salt + data).hexdigest()[:16]

    def add_file(self, path: Path, source: str) -> str:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from its eval run: rerun the evaluation or drop that run.")
        media_id = self._id(path.read_bytes())
        target = self.dir / f"{media_id}.png"
        if media_id not in self.entries and not target.exists():
            if self.mode == "link":
                try:
                    os.link(path, target)
                except OSError as err:
                    if not self._linked_warned:
                        log.warning("study.media=link: cannot hard-link %s (%s); copying instead", path, err)
                        self._linked_warned = True
                    shutil.copyfile(path, target)
            else:
                shutil.copyfile(path, target)
        self.entries.setdefault(media_id, {"file": f"media/{media_id}.png", "source": source})
        return media_id

    def add_image(self, image: Image.Image, source: str) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        media_id = self._id(data)
        target = self.dir / f"{media_id}.png"
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        self.entries.setdefault(media_id, {"file": f"media/{media_id}.png", "source": source})
        return media_id


def low_resolution_region(start: Image.Image, window: Box) -> Image.Image:
    """The input's region `window` (the zoomed state's, in the input's px), enlarged to the input's size with
    nearest: its real pixels, as blocks."""
    return start.crop(window).resize(start.size, Image.NEAREST)


def outlined_input(start: Image.Image, window: Box) -> Image.Image:
    """The whole input with the region `window` outlined in red (at least 6 px wide around the region's middle,
    so 256x stays visible)."""
    image = start.convert("RGB").copy()
    side = max(6, window[2] - window[0])
    middle_x, middle_y = (window[0] + window[2]) / 2, (window[1] + window[3]) / 2
    left = min(max(round(middle_x - side / 2), 0), image.width - side)
    top = min(max(round(middle_y - side / 2), 0), image.height - side)
    width = max(1, image.width // 128)
    ImageDraw.Draw(image).rectangle((left - width, top - width, left + side + width - 1, top + side + width - 1),
                                    outline=(255, 32, 32), width=width)
    return image


def region_in_state(window: Box, shown: Box, size: int) -> Box:
    """`window` (input px) in the px of a size x size state that shows the input's region `shown`: the crop of
    state k-1 that the chain zoomed into for state k (`coz_train.sr.chain.step_boxes`)."""
    unit = size / (shown[2] - shown[0])  # state px per input px
    box = [(window[0] - shown[0]) * unit, (window[1] - shown[1]) * unit,
           (window[2] - shown[0]) * unit, (window[3] - shown[1]) * unit]
    return tuple(round(v) for v in box)  # type: ignore[return-value]


def zoomed_view(previous: Image.Image, box: Box) -> Image.Image:
    """The crop `box` of `previous` bicubic-upscaled to its size: the "zoomed" image a prompt VLM sees."""
    return previous.crop(box).resize(previous.size, Image.BICUBIC)


def missing_media(study_dir: Path, entries: dict[str, dict[str, str]]) -> list[str]:
    """Media files of the manifest that are not in the study folder."""
    return [entry["file"] for entry in entries.values() if not (study_dir / entry["file"]).is_file()]
