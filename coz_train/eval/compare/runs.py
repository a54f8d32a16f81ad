"""The eval runs a comparison reads: every image's scores, the protocol they must share, their common images.

A run is the folder of a `python -m coz_train.eval` run (`coz_train.eval.record`): `eval_record.json`
holds its config, `per-sample/<image>/scores.json` every (method, scale, metric, value) of an image;
skipped images (`<image>.skipped.json`) have no scores and take no part.

The protocol of a run is what makes its numbers comparable with another's: the keys of its config that
change results (`record.result_keys`: the eval section less the keys that only say how a run is done)
less those that say what is evaluated (SUBJECT_KEYS: the adapter, the prompt VLM, the methods and prompt
sources, the user prompt, the seed), plus the digests of the files a run read (the record's
`input_files`, e.g. the `eval.zoom_centres` file). Runs whose protocols differ are refused with the keys named;
`--ignore-key` accepts a difference the user knows to be harmless (the same images in a moved folder).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from coz_train.eval.record import RECORD, is_finished, per_sample, read_sample, result_keys

log = logging.getLogger(__name__)

# what a run evaluates, not how: runs that differ here are what a comparison compares
SUBJECT_KEYS = ("seed", "policy", "eval.adapter", "eval.methods", "eval.prompt_sources", "eval.onestep_prompt_sources",
                "eval.user_prompt")
SHOWN_KEYS = ("eval.image_dir", "eval.shipped_images", "eval.process_size", "eval.scale", "eval.steps",
              "eval.backbone.name", "eval.max_new_tokens", "eval.do_sample", "eval.colorfix", "eval.metrics")
MAX_SHOWN = 8  # differing keys named in an error

Key = tuple[str, int, str]  # method, scale, metric


class ProtocolMismatchError(ValueError):
    pass


class TooFewImagesError(ValueError):
    pass


def within(key: str, prefixes: Iterable[str]) -> bool:
    """`key` is one of `prefixes` or lies below one (`policy.name_or_path` below `policy`)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class EvalRun:
    path: Path
    config: dict[str, Any]                          # as eval_record.json holds it
    scores: dict[Key, dict[str, float]] = field(repr=False)  # (method, scale, metric) -> image -> value
    images: tuple[str, ...]                         # the images with scores, sorted
    name: str = ""                                  # how tables name it (the folder's name, made unique)
    inputs: dict[str, str] = field(default_factory=dict)  # the record's input_files: digests of files read

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(method for method, _, _ in self.scores))

    def values(self, method: str, scale: int, metric: str, images: list[str]) -> np.ndarray:
        """[n] the scores of `images` (NaN where an image has none)."""
        by_image = self.scores.get((method, scale, metric), {})
        return np.array([by_image.get(image, math.nan) for image in images], dtype=float)

    def protocol(self) -> dict[str, Any]:
        keys = {**result_keys(self.config), **self.inputs}
        return {k: v for k, v in keys.items() if not within(k, SUBJECT_KEYS)}


def load_run(path: str | Path) -> EvalRun:
    """An eval run folder's config and every finished image's scores."""
    path = Path(path).expanduser()
    record = path / RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{path} is not the folder of a `python -m coz_train.eval` run (no {RECORD}): give "
                                "the run folders the evaluation wrote (hydra.run.dir), not their per-sample/ folder.")
    stored = json.loads(record.read_text())
    config = stored["config"]
    folder = per_sample(path)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []
    scores: dict[Key, dict[str, float]] = {}
    images = []
    for name in names:
        if not is_finished(path, name):
            continue
        sample = read_sample(path, name)
        if "skipped" in sample:
            continue
        images.append(name)
        for method, scale, metric, value in sample["scores"]:
            scores.setdefault((method, int(scale), metric), {})[name] = float(value)
    if not images:
        raise ValueError(f"{path}: no image with scores in {folder}: the run has not evaluated any image yet.")
    if not (path / "results.csv").is_file():
        log.warning("%s has no results.csv: its evaluation may not be finished (%d images so far)", path, len(images))
    return EvalRun(path, config, scores, tuple(images), inputs=stored.get("input_files", {}))


def named(runs: list[EvalRun]) -> list[EvalRun]:
    """The runs with names for the tables: each folder's name, with as many parent folders as make it unique."""
    depth = {id(run): 1 for run in runs}
    for _ in range(8):
        labels = {id(run): "/".join(run.path.resolve().parts[-depth[id(run)]:]) for run in runs}
        clashes = [run for run in runs if sum(labels[id(other)] == labels[id(run)] for other in runs) > 1]
        if not clashes:
            break
        for run in clashes:
            depth[id(run)] += 1
    return [replace(run, name=labels[id(run)]) for run in runs]


def check_protocol(runs: list[EvalRun], ignore: Iterable[str] = ()) -> None:
    """Stop, naming the keys, when the runs were not evaluated under one protocol."""
    ignore = tuple(ignore)
    first = runs[0].protocol()
    problems = []
    for run in runs[1:]:
        other = run.protocol()
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k) and not within(k, ignore))
        if differ:
            shown = "; ".join(f"{k}: {first.get(k)!r} in {runs[0].name}, {other.get(k)!r} in {run.name}"
                              for k in differ[:MAX_SHOWN])
            problems.append(shown + ("; ..." if len(differ) > MAX_SHOWN else ""))
    if problems:
        raise ProtocolMismatchError(
            f"The runs were evaluated under different protocols ({' | '.join(problems)}): their numbers are not "
            "comparable. Compare runs made with the same eval settings (e.g. +experiment=protocol_div2k_valid), or "
            "pass --ignore-key <key> for a difference that does not change the results (the same images moved).")


def common_images(runs: list[EvalRun], min_images: int) -> list[str]:
    """The images every run has scores for (sorted); too few of them stop the comparison."""
    common = sorted(set.intersection(*(set(run.images) for run in runs)))
    for run in runs:
        if len(run.images) > len(common):
            log.info("%s: %d of its %d images are not in every run and are left out", run.name,
                     len(run.images) - len(common), len(run.images))
    if len(common) < min_images:
        counts = ", ".join(f"{run.name}: {len(run.images)}" for run in runs)
        example = next((f" (e.g. {i!r} is missing from {r.name})" for run in runs for i in run.images
                        for r in runs if i not in r.images), "")
        raise TooFewImagesError(
            f"Only {len(common)} images are common to all runs ({counts}){example}; a paired comparison needs at "
            f"least --min-images={min_images}. Evaluate the runs on the same images (eval.image_dir, eval.max_images), "
            "or lower --min-images (below 6 images no difference can reach p < 0.05).")
    return common


def protocol_summary(run: EvalRun) -> dict[str, Any]:
    """The protocol keys a reader wants to see first."""
    keys = result_keys(run.config)
    shown = [k for k in SHOWN_KEYS if not (k == "eval.shipped_images" and keys.get("eval.image_dir"))]
    return {k: keys[k] for k in shown if k in keys}
