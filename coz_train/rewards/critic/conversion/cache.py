"""`critic.backend=hf` on an InternVL2.5 checkpoint: converted once into the cache, then loaded natively.

The converted folder is keyed on the checkpoint folder's path, the tiling, the conversion version and the folder's
files (names, sizes and modification times, as the zoom-pair cache keys a model folder: large weights are not
hashed): weights re-written in place are converted again, not served from an older conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from coz_train.tiny.models import build_once, cache_root

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1  # bump when the conversion changes so old converted folders are not reused
READ_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model")  # the files the conversion reads


def _config(name: str, revision: str | None) -> tuple[dict, Path | None]:
    """The checkpoint's config.json and its local folder (None for a hub id not yet downloaded whole)."""
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), path
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(name, "config.json", revision=revision)).read_text()), None


def native_internvl(name: str, revision: str | None, max_tiles: int) -> str:
    """`name` itself unless it is an InternVL2/2.5 hub-layout checkpoint; then its converted folder in the cache."""
    config, folder = _config(name, revision)
    if config.get("model_type") != "internvl_chat":
        return name
    if folder is None:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, revision=revision,
                                        allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    out = converted_folder(folder, max_tiles)
    if not (out / "config.json").is_file():
        from coz_train.rewards.critic.conversion.build import convert

        log.info("Converting the InternVL2.5 checkpoint %s to the native layout in %s (once)", folder, out)
        build_once(out, "config.json", lambda tmp: convert(folder, tmp, max_tiles=max_tiles))
    return str(out)


def folder_identity(folder: Path) -> list:
    """The files the conversion reads, with sizes and modification times (`coz_train.data.chains.path_identity`
    keys a model folder of the zoom-pair cache the same way)."""
    files = sorted({p for pattern in READ_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def converted_folder(folder: Path, max_tiles: int) -> Path:
    """Where the conversion of `folder`'s current files with this tiling is (or will be) cached."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(folder.resolve()).strip("/"))[-120:]
    files = hashlib.sha256(json.dumps(folder_identity(folder)).encode()).hexdigest()[:12]
    return cache_root() / "converted" / f"{slug}-tiles{max_tiles}-v{CONVERSION_VERSION}-{files}"
