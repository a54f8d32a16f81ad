"""`critic.backend=hf` on an InternVL2.5 checkpoint: converted once into the cache, then loaded natively."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from coz_train.tiny.models import build_once, cache_root

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1  # bump when the conversion changes so old converted folders are not reused


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
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(folder.resolve()).strip("/"))[-120:]
    out = cache_root() / "converted" / f"{slug}-tiles{max_tiles}-v{CONVERSION_VERSION}"
    if not (out / "config.json").is_file():
        from coz_train.critic_convert.build import convert

        log.info("Converting the InternVL2.5 checkpoint %s to the native layout in %s (once)", folder, out)
        build_once(out, "config.json", lambda tmp: convert(folder, tmp, max_tiles=max_tiles))
    return str(out)
