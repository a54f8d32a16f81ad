"""What an eval config asks for: the methods, each one's prompt sources, the result names, and the
checks that stop a bad config before any model loads.

Result names: the method (`nearest`, `bicubic`), or `<method>-<source>` for a backbone method
(`onestep-null`, `recursive_multiscale-vlm+adapter`); `onestep` takes its sources from
`eval.onestep_prompt_sources`, the two CoZ chains and the full-image chain (`full`, its settings in
`eval.full_image`) from `eval.prompt_sources` (plus `user` when `eval.user_prompt` is set and no
listed source uses it yet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from coz_train.eval.images import zoom_centres
from coz_train.eval.judge.checks import check_judge
from coz_train.sr.backbones import registered_backbones
from coz_train.sr.chain import METHODS, PROMPTED_METHODS, check_geometry
from coz_train.sr.colorfix import COLORFIXES
from coz_train.sr.full_image import check_full_image
from coz_train.sr.prompter import PROMPT_SOURCES, check_adapter, uses_user_prompt


def _sources(values: Any) -> list[str]:
    """A source list with a bare YAML/CLI `null` read as the "null" source."""
    return ["null" if s is None else s for s in values]


def prompt_sources(ev: DictConfig) -> list[str]:
    """The CoZ chains' sources: eval.prompt_sources, plus `user` when eval.user_prompt is set and no source uses it."""
    sources = _sources(ev.prompt_sources)
    return sources + (["user"] if ev.user_prompt and not any(uses_user_prompt(s) for s in sources) else [])


def onestep_sources(ev: DictConfig) -> list[str]:
    return _sources(ev.onestep_prompt_sources)


def source_key(method: str) -> str:
    return "eval.onestep_prompt_sources" if method == "onestep" else "eval.prompt_sources"


def method_sources(ev: DictConfig) -> dict[str, list[str]]:
    """Each of eval.methods -> its prompt sources ([] for the plain resizes)."""
    chains, onestep = prompt_sources(ev), onestep_sources(ev)
    return {m: (onestep if m == "onestep" else chains) if m in PROMPTED_METHODS else [] for m in ev.methods}


def method_labels(ev: DictConfig) -> list[str]:
    """Result names: the method, or `<method>-<source>` for a method with prompts."""
    labels: list[str] = []
    for method, sources in method_sources(ev).items():
        labels += [f"{method}-{s}" for s in sources] if sources else [method]
    return labels


def used_sources(ev: DictConfig) -> set[str]:
    return {s for sources in method_sources(ev).values() for s in sources}


def zoom_scales(ev: DictConfig) -> list[int]:
    """The zoom of each step: 4, 16, 64, 256 for scale 4 and 4 steps."""
    return [ev.scale**k for k in range(1, ev.steps + 1)]


def check_consistency_metrics(ev: DictConfig) -> None:
    """eval.consistency_metrics: registered full-reference metrics that fit the P/scale px they compare at."""
    from coz_train.image_quality import METRIC_NAMES, is_full_reference, min_side

    names = list(ev.consistency_metrics)
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"eval.consistency_metrics: unknown metric(s) {unknown}; give full-reference ones "
                         f"({[n for n in METRIC_NAMES if is_full_reference(n)]}) or [] for none.")
    no_reference = [name for name in names if not is_full_reference(name)]
    if no_reference:
        raise ValueError(f"eval.consistency_metrics: {no_reference} are no-reference metrics; consistency compares "
                         f"a state with its source: give full-reference ones "
                         f"({[n for n in METRIC_NAMES if is_full_reference(n)]}) or [] for none.")
    side = ev.process_size // ev.scale
    small = {name: min_side(name) for name in names if min_side(name) > side}
    if small:
        raise ValueError(f"eval.consistency_metrics: {list(small)} need at least {max(small.values())} px, but the "
                         f"states are compared at eval.process_size / eval.scale = {side} px: raise eval.process_size "
                         "or drop them.")


def check_eval_config(cfg: DictConfig) -> None:
    ev = cfg.eval
    unknown = [m for m in ev.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"eval.methods: {unknown} not among {list(METHODS)}.")
    for key, sources in (("eval.prompt_sources", prompt_sources(ev)), ("eval.onestep_prompt_sources", onestep_sources(ev))):
        bad_sources = [s for s in sources if s not in PROMPT_SOURCES]
        if bad_sources:
            raise ValueError(f"{key}: {bad_sources} not among {list(PROMPT_SOURCES)}.")
    for method, sources in method_sources(ev).items():
        if method in PROMPTED_METHODS and not sources:
            raise ValueError(f"eval.methods has '{method}' but {source_key(method)} is empty (e.g. [null]).")
        needs_user = [s for s in sources if uses_user_prompt(s)]
        if needs_user and not ev.user_prompt:
            raise ValueError(f"{source_key(method)} has {needs_user} (for {method}) but eval.user_prompt is empty: "
                             "set eval.user_prompt='<text>' or drop those sources.")
    if any("vlm+adapter" in s for s in used_sources(ev)):
        check_adapter(ev.adapter)
    if ev.colorfix not in COLORFIXES:
        raise ValueError(f"eval.colorfix='{ev.colorfix}' is not one of {COLORFIXES}.")
    if ev.backbone.name not in registered_backbones():
        raise ValueError(f"eval.backbone.name='{ev.backbone.name}' is not one of {registered_backbones()}.")
    check_geometry(ev.process_size, ev.scale, ev.steps)
    if "full" in ev.methods:
        check_full_image(ev.full_image, ev.process_size, ev.scale, ev.steps)
    if ev.num_shards < 1 or not 0 <= ev.shard < ev.num_shards:
        raise ValueError(f"eval.shard={ev.shard} of eval.num_shards={ev.num_shards}: give 0 <= eval.shard < "
                         "eval.num_shards (slurm/eval.sbatch sets both from the array).")
    if ev.image_dir and not Path(ev.image_dir).expanduser().is_dir():
        raise FileNotFoundError(f"eval.image_dir='{ev.image_dir}' is not a folder of images.")
    if not ev.image_dir and not ev.shipped_images:
        raise ValueError("No eval images: set eval.image_dir=<folder> (DIV2K / DIV8K train in the paper).")
    check_consistency_metrics(ev)
    if ev.zoom_centres or ev.zoom_centre is not None:
        zoom_centres(ev)  # the file read and every entry checked (names, 0..1)
    check_judge(ev.get("judge"))  # eval.judge: its model found (or its server's URL well formed), nothing loaded
