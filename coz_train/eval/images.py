"""The eval images: one fixed, sorted list, each image opened only when its turn comes.

The list is the same in every process of a sharded run (it is split by position, `shards.py`), so
it is made from file names alone: the files of `eval.image_dir` in sorted order (or
`eval.shipped_images`), the first `eval.max_images` of them. An image that cannot be used
(unreadable, too large, too small with `eval.small_images=skip`) is skipped and recorded when it is
opened, and is not replaced by the next file: a shard cannot know how many the others skipped.
Loading one image at a time keeps the memory of a 2,300-image DIV2K + DIV8K run to one original.

Each image's zoom centre (`zoom_centres`): its entry in the `eval.zoom_centres` file, else
`eval.zoom_centre`, else the image centre; (x, y) as fractions of the start state (0, 0 = top left).
The file is a CSV with the header `image,x,y` or a JSON object `{"<image>": [x, y], ...}`; an image
is named by its per-sample folder name, its path under eval.image_dir (`sub/0801.png`) or that path
without the suffix (`sub/0801`), or for the shipped images by the skimage name (`astronaut`). The
names are checked against the whole list (before eval.max_images), so one file serves every shard.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

from coz_train.data.images import NoUsableImagesError, SkipReport, list_image_files, load_rgb, shipped_images
from coz_train.sr.chain import IMAGE_CENTRE, Centre, check_centre


@dataclass(frozen=True)
class EvalImage:
    name: str  # the per-sample folder: the path under eval.image_dir without suffix, [^\w.+-] -> _
    label: str  # how messages name it
    source: Any  # a file path, or a PIL image (shipped)


def eval_image_list(ev: DictConfig) -> list[EvalImage]:
    """The eval images, the first eval.max_images of the sorted list."""
    return _image_list(ev, ev.max_images)


def _image_list(ev: DictConfig, max_images: int | None) -> list[EvalImage]:
    if ev.image_dir:
        root = Path(ev.image_dir).expanduser()
        items = [(str(p.relative_to(root).with_suffix("")), str(p.relative_to(root)), p) for p in list_image_files(root)]
        where = f"eval.image_dir='{ev.image_dir}'"
    else:
        items = [(name.split(":", 1)[1], name, image) for name, image in shipped_images(list(ev.shipped_images))]
        where = "eval.shipped_images"
    if max_images is not None:
        items = items[:max_images]
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


def _file_entries(path: Path, key: str) -> list[tuple[str, str, list]]:
    """(where, image, [x, y]) of every entry of a zoom-centre file; `where` names the file and row for errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{key}='{path}' is not a file: give a CSV (image,x,y) or JSON ({{image: [x, y]}}) file.")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "x", "y"} <= {c.strip() for c in reader.fieldnames}:
                raise ValueError(f"{key}='{path}': the CSV needs the header image,x,y (got {reader.fieldnames}).")
            rows = [({k.strip(): v for k, v in row.items() if k}, reader.line_num) for row in reader]
        entries = []
        for row, line in rows:
            where = f"{key}='{path}', row {line}"
            try:
                entries.append((where, (row["image"] or "").strip(), [float(row["x"]), float(row["y"])]))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: x and y must be numbers, got {row.get('x')!r}, {row.get('y')!r}.") from None
        return entries
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{key}='{path}' is not valid JSON: {error}.") from None
        if not isinstance(data, dict):
            raise ValueError(f"{key}='{path}': the JSON must be an object {{image: [x, y], ...}}.")
        entries = []
        for image, value in data.items():
            where = f"{key}='{path}', entry '{image}'"
            xy = [value.get("x"), value.get("y")] if isinstance(value, dict) else value
            if not isinstance(xy, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in xy):
                raise ValueError(f"{where}: give [x, y] or {{\"x\": x, \"y\": y}} as numbers, got {value!r}.")
            entries.append((where, image, xy))
        return entries
    raise ValueError(f"{key}='{path}': a zoom-centre file is a .csv (image,x,y) or a .json ({{image: [x, y]}}).")


def zoom_centres(ev: DictConfig) -> dict[str, Centre]:
    """Every eval image's zoom centre, by EvalImage.name; ValueError naming the key, file and row for a bad one."""
    default = check_centre(ev.zoom_centre, "eval.zoom_centre") if ev.zoom_centre is not None else IMAGE_CENTRE
    images = _image_list(ev, None)
    centres = {image.name: default for image in images}
    if not ev.zoom_centres:
        return centres
    names: dict[str, str] = {}
    for image in images:
        label = image.label.removeprefix("skimage:")
        names.update({image.name: image.name, label: image.name, str(Path(label).with_suffix("")): image.name})
    given: dict[str, str] = {}
    for where, key, xy in _file_entries(Path(ev.zoom_centres).expanduser(), "eval.zoom_centres"):
        if key not in names:
            raise ValueError(f"{where}: '{key}' is not an eval image (e.g. {images[0].label!r}); eval.image_dir="
                             f"{ev.image_dir!r}. Remove the row or fix the name.")
        name = names[key]
        if name in given:
            raise ValueError(f"{where}: '{key}' was given already ({given[name]}).")
        given[name] = where
        centres[name] = check_centre(xy, where)
    return centres
