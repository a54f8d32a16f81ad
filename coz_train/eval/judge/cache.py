"""The judge's answers, cached per (judge settings, wider view, zoomed output), so a rerun asks the model nothing.

One small JSON file per answer, `<cache>/<key[:2]>/<key>.json` = `{"score": <value or null>}`, written by an
atomic rename: ranks and SLURM array tasks writing into one cache on a shared file system never see half a file,
and two writing the same key write the same answer. The key is the SHA-256 of

- the settings that change an answer (`ANSWER_KEYS`: the model and its revision, the served name, the backend,
  dtype, question, scoring mode, score range, answer length, logprob count, image budget and tiling),
- the two images' pixels (mode, size and raw bytes, each image hashed on its own: a state saved as PNG and read
  back has the key it had in memory, so re-judging a run folder finds the answers its evaluation cached).

Settings that do not change an answer (batch size, device, URL, timeouts, retries, concurrency) are not in it.
A null score (an unparsable answer) is cached too: the judge is greedy, asking again gives the same answer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

CACHE_FORMAT = 1  # bump when what a cached answer means changes: older entries are then never read
ANSWER_KEYS = (
    "name_or_path",
    "revision",
    "served_model",
    "backend",
    "dtype",
    "instruction",
    "scoring",
    "score_max",
    "max_new_tokens",
    "top_logprobs",
    "min_pixels",
    "max_pixels",
    "max_tiles",
    "image_backend",
    "trust_remote_code",
)
MISS = object()  # `JudgeCache.get` of a key never stored (None is a stored unparsable answer)


def answer_settings(section: DictConfig) -> dict[str, Any]:
    """The `eval.judge` settings that change an answer (`ANSWER_KEYS`), with the cache format."""
    return {"format": CACHE_FORMAT, **{key: section.get(key) for key in ANSWER_KEYS}}


def image_digest(image: Image.Image) -> str:
    """SHA-256 of an image's pixels as RGB (mode, size and bytes): the same for the image in memory and its PNG."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.mode}:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


class JudgeCache:
    """Answers under `folder`, keyed by `settings` (`answer_settings`) and the two images."""

    def __init__(self, folder: Path, settings: dict[str, Any]):
        self.folder = Path(folder).expanduser()
        self.settings = json.dumps(settings, sort_keys=True)

    def key(self, wider: Image.Image, zoomed: Image.Image) -> str:
        digest = hashlib.sha256(self.settings.encode())
        for image in (wider, zoomed):
            digest.update(image_digest(image).encode())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> float | None | object:
        """The cached score (None: the judge's answer was unparsable), or `MISS`."""
        path = self.path(key)
        try:
            return json.loads(path.read_text())["score"]
        except FileNotFoundError:
            return MISS
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"The judge cache entry {path} cannot be read ({type(err).__name__}: {err}): delete it "
                "(the pair is then judged again), or set eval.judge.cache_dir to another folder."
            ) from None

    def put(self, key: str, score: float | None) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"score": score}))
        os.replace(tmp, path)
