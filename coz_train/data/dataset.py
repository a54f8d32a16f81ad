"""Building the GRPO training set of zoom pairs, cached on disk as Arrow.

One row per (image, chain, depth): `prompt` (the CoZ message, conversational), `images`
([previous state, zoomed image]), `depth`, `source` and `crop_box`. The rows are written once
with `datasets` under `<cache_dir>/<key>`, where the key hashes the data config, the seed (for
random crops), the list of source files with their sizes and times and how the images are stored
(zstd TIFF, which decodes 3.7 times faster than PNG: `coz_train.data.storage`), so a second run with the
same data loads them instead of rebuilding, and any change to the images or the config rebuilds.
With `data.upscaler` an SR backbone the rows are made chunk by chunk by `coz_train.data.chains`
(resumable, shardable) under the same kind of key, extended by the backbone's identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from coz_train.data.chains import build_backbone_dataset, chain_key, check_chain_config, uses_backbone
from coz_train.data.images import NoUsableImagesError, SkipReport, list_image_files, load_rgb, shipped_images
from coz_train.data.prompts import zoom_prompt
from coz_train.data.storage import storage_key, stored
from coz_train.data.zoom import resampler, start_state, zoom_chain
from coz_train.progress import progress_bar
from coz_train.tiny.models import cache_root

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the row layout or the chain construction changes (2: EXIF orientation applied)
GEOMETRY_KEYS = (
    "process_size", "scale", "depth", "crop", "chains_per_image", "upscaler", "small_images",
    "max_image_pixels", "single_image_prompt", "max_images",
)

FEATURES = datasets.Features(
    {
        "prompt": [
            {"role": datasets.Value("string"), "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}
        ],
        "images": datasets.Sequence(datasets.Image()),
        "depth": datasets.Value("int32"),
        "source": datasets.Value("string"),
        "crop_box": datasets.Sequence(datasets.Value("int32"), length=4),
    }
)


@dataclass
class ImageSource:
    """Where the HR images come from: names plus a way to open each, and a signature for the cache key."""

    kind: str
    items: list[tuple[str, Any]]  # (name, path | PIL image | dataset index)
    signature: Any
    dataset: Any = None

    def open(self, item: Any) -> str | Path | Image.Image:
        if self.kind == "hub":
            return self.dataset[item]
        return item


def image_source(data_cfg: Any) -> ImageSource:
    if data_cfg.dataset:
        ds = datasets.load_dataset(data_cfg.dataset, split=data_cfg.dataset_split)
        column = data_cfg.dataset_image_column
        if column not in ds.column_names:
            raise KeyError(
                f"data.dataset_image_column='{column}' is not a column of {data_cfg.dataset} "
                f"(columns: {ds.column_names}); set data.dataset_image_column."
            )
        ds = ds.select_columns([column])
        items = [(f"{data_cfg.dataset}[{i}]", i) for i in range(len(ds))]
        source = ImageSource("hub", items, ["hub", data_cfg.dataset, data_cfg.dataset_split, ds._fingerprint])
        source.dataset = _ColumnView(ds, column)
        return source
    if data_cfg.image_dir:
        files = list_image_files(data_cfg.image_dir)
        root = Path(data_cfg.image_dir).expanduser()
        if not files:
            raise NoUsableImagesError(f"data.image_dir='{data_cfg.image_dir}' contains no image files ({sorted({'.png', '.jpg', '...'})}).")
        signature = [["folder", str(root.resolve())]] + [
            [str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files
        ]
        return ImageSource("folder", [(str(p.relative_to(root)), p) for p in files], signature)
    import skimage

    names = list(data_cfg.shipped_images)
    return ImageSource("shipped", shipped_images(names), ["shipped", skimage.__version__, names])


class _ColumnView:
    def __init__(self, ds: datasets.Dataset, column: str):
        self.ds, self.column = ds, column

    def __getitem__(self, i: int) -> Any:
        return self.ds[i][self.column]


def cache_key(data_cfg: Any, seed: int, signature: Any, extra: Any = None) -> str:
    """`extra`: what a backbone chain adds (`chains.chain_key`), or for resampler rows their image storage
    (`storage.storage_key`: None, the key as it was, for PNG)."""
    geometry = {k: data_cfg[k] for k in GEOMETRY_KEYS}
    if data_cfg.crop == "random":
        geometry["seed"] = seed
    blob = json.dumps([CACHE_FORMAT, geometry, signature] + ([extra] if extra is not None else []), sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rows(data_cfg: Any, seed: int, source: ImageSource, report: SkipReport, used: list[str]) -> Iterator[dict]:
    upscale = resampler(data_cfg.upscaler)
    prompt = zoom_prompt(data_cfg.single_image_prompt)
    total = min(len(source.items), data_cfg.max_images or len(source.items))  # skipped images make it run longer
    with progress_bar(total, "zoom pairs", log) as bar:
        for index, (name, item) in enumerate(source.items):
            image = load_rgb(
                source.open(item), name, data_cfg.process_size, data_cfg.small_images, data_cfg.max_image_pixels, report
            )
            if image is None:
                bar.update()
                continue
            used.append(name)
            start = start_state(image, data_cfg.process_size)
            for chain in range(data_cfg.chains_per_image):
                # One generator per (image, chain): the crops do not depend on which other images exist.
                rng = np.random.default_rng([seed, index, chain]) if data_cfg.crop == "random" else None
                states, boxes = zoom_chain(start, data_cfg.depth, data_cfg.scale, data_cfg.crop, upscale, rng)
                for depth in range(1, data_cfg.depth + 1):
                    pair = [states[depth]] if data_cfg.single_image_prompt else [states[depth - 1], states[depth]]
                    yield {"prompt": prompt, "images": pair, "depth": depth, "source": name,
                           "crop_box": list(boxes[depth - 1])}
            bar.update()
            if data_cfg.max_images is not None and len(used) >= data_cfg.max_images:
                break


def _stored_rows(**kwargs: Any) -> Iterator[dict]:
    """`_rows` with each image as the cache stores it (`storage.stored`)."""
    for row in _rows(**kwargs):
        yield dict(row, images=[stored(image) for image in row["images"]])


def check_data_config(data_cfg: Any) -> None:
    """Cheap checks that must fail before any model loads."""
    for key, low in (("process_size", 8), ("scale", 2), ("depth", 1), ("chains_per_image", 1)):
        if data_cfg[key] < low:
            raise ValueError(f"data.{key}={data_cfg[key]} must be >= {low}.")
    if data_cfg.process_size // data_cfg.scale < 1:
        raise ValueError(f"data.process_size={data_cfg.process_size} is too small for data.scale={data_cfg.scale}.")
    if data_cfg.small_images not in ("upscale", "skip"):
        raise ValueError(f"data.small_images='{data_cfg.small_images}' must be 'upscale' or 'skip'.")
    check_chain_config(data_cfg)
    if not (data_cfg.image_dir or data_cfg.dataset or data_cfg.shipped_images):
        raise ValueError(
            "No training images: set data.image_dir=<folder of HR images> or data.dataset=<Hugging Face dataset>."
        )
    if data_cfg.image_dir and not Path(data_cfg.image_dir).expanduser().is_dir():
        raise FileNotFoundError(f"data.image_dir='{data_cfg.image_dir}' is not a folder: point it at a folder of images.")


def cache_target(data_cfg: Any, seed: int, policy_cfg: Any | None, source: ImageSource) -> Path:
    """Where this config's samples are (or will be) published."""
    root = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else cache_root() / "zoom_pairs"
    extra = chain_key(data_cfg, policy_cfg) if uses_backbone(data_cfg) else storage_key()
    return root / cache_key(data_cfg, seed, source.signature, extra)


def build_zoom_dataset(data_cfg: Any, seed: int, policy_cfg: Any | None = None) -> datasets.Dataset:
    """The zoom-pair dataset for this config, from the cache when it is there.

    `policy_cfg` is needed only for data.backbone_prompts=vlm (the base policy writes the backbone's prompts).
    """
    check_data_config(data_cfg)
    if uses_backbone(data_cfg) and data_cfg.num_shards > 1:
        raise ValueError(f"data.num_shards={data_cfg.num_shards}: shards are built by `python -m coz_train.data`; "
                         "training reads the merged samples (leave data.shard / data.num_shards at 0 / 1).")
    source = image_source(data_cfg)
    target = cache_target(data_cfg, seed, policy_cfg, source)
    if (target / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(target))
        log.info("Zoom pairs: %d samples loaded from cache %s", len(ds), target)
        return ds
    if uses_backbone(data_cfg):
        return build_backbone_dataset(data_cfg, seed, policy_cfg, source, target)

    report, used = SkipReport(), []
    tmp = target.with_name(f"{target.name}.building{os.getpid()}")
    try:
        ds = datasets.Dataset.from_generator(
            _stored_rows,
            features=FEATURES,
            gen_kwargs={"data_cfg": data_cfg, "seed": seed, "source": source, "report": report, "used": used},
            cache_dir=str(tmp / "work"),
            keep_in_memory=False,
        )
    except ValueError:
        if used:  # not the empty-dataset case
            raise
        ds = None
    if report.total:
        log.warning("Skipped %d of %d source images: %s", report.total, report.total + len(used), report.summary())
    if ds is None or len(ds) == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NoUsableImagesError(
            f"No usable image among {len(source.items)} from the {source.kind} source ({report.summary()}). "
            "Check data.image_dir / data.dataset, or use data.small_images=upscale for small images."
        )
    ds.save_to_disk(str(tmp / "final"))
    try:
        (tmp / "final").rename(target)  # atomic publish: a crashed build is never loaded
    except OSError:
        if not (target / "dataset_info.json").is_file():
            raise
        # another process (a second rank) published the same samples first: use theirs
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("Zoom pairs: %d samples from %d images built into %s", len(ds), len(used), target)
    return datasets.load_from_disk(str(target))
