"""The eval images: one fixed, sorted list, each image opened only when its turn comes.

The list is the same in every process of a sharded run (it is split by position, `shards.py`), so
it is made from file names alone: the files of `eval.image_dir` in sorted order (or
`eval.shipped_images`), the first `eval.max_images` of them. An image that cannot be used
(unreadable, too large, too small with `eval.small_images=skip`) is skipped and recorded when it is
opened, and is not replaced by the next file: a shard cannot know how many the others skipped.
Loading one image at a time keeps the memory of a 2,300-image DIV2K + DIV8K run to one original.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

from coz_train.data.images import NoUsableImagesError, SkipReport, list_image_files, load_rgb, shipped_images


@dataclass(frozen=True)
class EvalImage:
    name: str  # the per-sample folder: the path under eval.image_dir without suffix, [^\w.+-] -> _
    label: str  # how messages name it
    source: Any  # a file path, or a PIL image (shipped)


def eval_image_list(ev: DictConfig) -> list[EvalImage]:
    if ev.image_dir:
        root = Path(ev.image_dir).expanduser()
        items = [(str(p.relative_to(root).with_suffix("")), str(p.relative_to(root)), p) for p in list_image_files(root)]
        where = f"eval.image_dir='{ev.image_dir}'"
    else:
        items = [(name.split(":", 1)[1], name, image) for name, image in shipped_images(list(ev.shipped_images))]
        where = "eval.shipped_images"
    if ev.max_images is not None:
        items = items[: ev.max_images]
    if not items:
        raise NoUsableImagesError(f"No eval image in {where}: point eval.image_dir at a folder of images.")
    images, seen = [], {}
    for stem, label, source in items:
        name = re.sub(r"[^\w.+-]", "_", stem)
        if name in seen:
            raise ValueError(f"{where}: '{seen[name]}' and '{label}' would share the per-sample folder '{name}': "
                             "rename one of them (names are compared without their suffix).")
        seen[name] = label
        images.append(EvalImage(name, label, source))
    return images


def open_eval_image(image: EvalImage, ev: DictConfig) -> tuple[Image.Image | None, SkipReport]:
    """The original RGB image, or None and the reason it was skipped."""
    report = SkipReport()
    return load_rgb(image.source, image.label, ev.process_size, ev.small_images, ev.max_image_pixels, report), report
