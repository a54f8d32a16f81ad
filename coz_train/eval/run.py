"""Evaluation: every method's zoom chain on every eval image, metrics per method and scale.

    python -m coz_train.eval +experiment=smoke_eval
    python -m coz_train.eval +experiment=eval_qwen eval.image_dir=/data/DIV2K_train_HR \
        eval.backbone.lora_dir=/models/osediff_sd3 eval.adapter=<run>/adapter
    accelerate launch --num_processes 8 -m coz_train.eval +experiment=eval_qwen ...   # 8 ranks, one GPU each
    sbatch --array=0-15 slurm/eval.sbatch +experiment=eval_qwen ...                   # 16 tasks, one shard each

Methods (`eval.methods`): `nearest`, `bicubic` (plain resizes, one result each) and the backbone
methods `onestep`, `recursive`, `recursive_multiscale`, one result per prompt source named
`<method>-<source>` (`coz_train.eval.methods`); `full` (the official full-image chain, tile by
tile: `coz_train.sr.full_image`, docs/full-image.md) also as `full-<source>/whole` in results.csv.
Geometry and what each prompt source sees: `coz_train.sr.chain`; the sources (`null`, `user`, `vlm`, `vlm+adapter`, `vlm+user`,
`vlm+adapter+user`): `coz_train.sr.prompter`.

Each process evaluates its share of the images (`shards.py`: eval.shard of eval.num_shards, then
its rank under accelerate), skipping those the run folder already has (`record.py`: one atomic
rename per image, so a killed run resumes where it stopped), with a progress bar and ETA on the
log. Then the tables: by this process when it was alone or every image is in, by rank 0 after the
other ranks' images are in (`merge.py`; `python -m coz_train.eval.merge <run>` by hand).
Every method zooms into the same windows of the start: the centre, or around `eval.zoom_centre` /
the image's entry in the `eval.zoom_centres` file (`coz_train.sr.chain.zoom_windows`); the ground
truth follows them. Besides `eval.metrics`, each chain's cross-scale consistency is scored with
`eval.consistency_metrics` (`consistency.py`: `consistency_<m>`, `projected_<m>`; docs/consistency.md).
Everything is checked (methods, prompt sources, adapter folder, backbone name, metric names,
zoom centres, shard keys, the run folder's earlier config) before a model loads. Each image is seeded from
`seed` and its name, so the same config gives the same images and numbers, however it is split.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.data.zoom import start_state
from coz_train.devices import rank_device
from coz_train.eval.consistency import ConsistencyScores
from coz_train.eval.images import EvalImage, eval_image_list, open_eval_image, zoom_centres
from coz_train.eval.judge import judged, load_judge
from coz_train.eval.merge import merge, missing_images
from coz_train.eval.methods import check_eval_config, method_labels, used_sources, zoom_scales
from coz_train.eval.record import Score, is_finished, open_record, write_sample, write_skip
from coz_train.eval.shards import current_shard
from coz_train.progress import progress_bar
from coz_train.sr.backbones import load_backbone
from coz_train.sr.chain import (
    PROMPTED_METHODS,
    RESAMPLE_METHODS,
    Centre,
    Chain,
    onestep_chains,
    recursive_chains,
    reference_states,
    resample_chain,
    step_boxes,
    zoom_windows,
)
from coz_train.sr.full_image import FullImageChain, full_image_chains, whole_references
from coz_train.sr.prompter import VLMPrompter, is_vlm, prompt_source

log = logging.getLogger(__name__)

__all__ = ["check_eval_config", "evaluate", "method_labels"]

WAIT_POLL_S = 2.0  # rank 0 looks for the other ranks' images this often
WAIT_LOG_S = 300.0


def sample_seed(seed: int, name: str) -> int:
    """The seed of one image: its result does not depend on the images a process did before it."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def chain_windows(ev: DictConfig, centres: list[Centre] | None, count: int) -> list[list[tuple[int, int, int, int]]]:
    """Each start's zoom windows (`zoom_windows`) around `centres[i]`; the image centre when None."""
    if centres is None:
        if ev.zoom_centre is not None or ev.zoom_centres:
            raise ValueError("eval.zoom_centre / eval.zoom_centres are set but run_chains got no centres: pass each "
                             "start's (coz_train.eval.images.zoom_centres) and build the ground truth on the same "
                             "windows (reference_states(..., windows)).")
        centres = [None] * count  # type: ignore[list-item]
    return [zoom_windows(ev.process_size, ev.scale, ev.steps, c) for c in centres]


def run_chains(cfg: DictConfig, starts: list, backbone: Any, prompter: VLMPrompter | None,
               centres: list[Centre] | None = None) -> dict[str, list[Chain]]:
    """Every method's chains of `starts`, all zooming into the windows around `centres` (`chain_windows`)."""
    ev = cfg.eval
    windows = chain_windows(ev, centres, len(starts))
    boxes = [step_boxes(w, ev.process_size, ev.scale) for w in windows]
    chains: dict[str, list[Chain]] = {}
    for label in method_labels(ev):
        method, _, source = label.partition("-")
        if method in RESAMPLE_METHODS:
            chains[label] = [resample_chain(s, method, ev.scale, ev.steps, w) for s, w in zip(starts, windows, strict=True)]
        elif method == "full":
            fi = ev.full_image
            tile_prompter = prompter.with_max_new_tokens(fi.max_new_tokens) if prompter else None
            prompts = prompt_source(source, tile_prompter, ev.user_prompt)
            chains[label] = full_image_chains(starts, backbone, prompts, label, ev.scale, fi.steps, fi.tile_size,
                                              fi.tile_overlap, ev.batch_size, decode_shift=fi.vae_decode_shift,
                                              windows=windows)
        elif method == "onestep":
            prompts = prompt_source(source, prompter, ev.user_prompt)
            chains[label] = onestep_chains(starts, backbone, ev.scale, ev.steps, prompts, label, ev.batch_size, windows)
        else:
            prompts = prompt_source(source, prompter, ev.user_prompt)
            chains[label] = recursive_chains(starts, backbone, prompts, label, ev.scale, ev.steps, ev.colorfix,
                                             ev.batch_size, single_image=method == "recursive", boxes=boxes)
        log.debug("%s: done", label)
    return chains


def score_chains(chains: list[Chain], references: list, metrics: dict[str, Any], scales: list[int],
                 consistency: ConsistencyScores | None = None) -> list[Score]:
    """(method, scale, metric, value) of every state; full-reference metrics only where there is a ground truth;
    then the chains' cross-scale consistency (`consistency.py`), when given."""
    scores: list[Score] = []
    for chain in chains:
        for k, scale in enumerate(scales[: len(chain.states) - 1], start=1):  # `full` may have fewer steps
            for name, metric in metrics.items():
                reference = references[k - 1]
                if metric.full_reference and reference is None:
                    continue
                scores.append((chain.method, scale, name, float(metric(chain.states[k], reference))))
    return scores + (consistency(chains, references, scales) if consistency is not None else [])


def score_whole_states(chains: list[Chain], original: Any, ev: DictConfig, metrics: dict[str, Any]) -> list[Score]:
    """`full-<source>/whole`: each whole full-image state (P * scale^k px), against the original at that size where
    it has the pixels. The chain's own rows score the window every other method shows (docs/full-image.md)."""
    full = [chain for chain in chains if isinstance(chain, FullImageChain)]
    if not full or not ev.full_image.score_whole:
        return []
    references = whole_references(original, ev.process_size, ev.scale, ev.full_image.steps)
    return score_chains([Chain(f"{c.method}/whole", c.whole) for c in full], references, metrics, zoom_scales(ev))


def build_eval_metrics(ev: DictConfig, device: torch.device) -> tuple[dict[str, Any], ConsistencyScores, dict[str, str]]:
    """eval.metrics and the consistency scores of eval.consistency_metrics, each metric built once; the reasons of
    the unavailable ones, by result name (`consistency_lpips`, `projected_lpips` for eval.consistency_metrics')."""
    from coz_train.image_quality import build_metrics

    built, missing = build_metrics(list(dict.fromkeys([*ev.metrics, *ev.consistency_metrics])), device)
    unavailable = {name: reason for name, reason in missing.items() if name in ev.metrics}
    for name in ev.consistency_metrics:
        if name in missing:
            unavailable.update({f"consistency_{name}": missing[name], f"projected_{name}": missing[name]})
    consistency = ConsistencyScores({name: built[name] for name in ev.consistency_metrics if name in built})
    return {name: built[name] for name in ev.metrics if name in built}, consistency, unavailable


def evaluate_images(cfg: DictConfig, out: Path, images: list[EvalImage]) -> None:
    """Evaluate `images` into the record of `out`, loading the metrics and models first."""
    from transformers import set_seed

    from coz_train.eval.figures import chain_figure

    ev = cfg.eval
    device = rank_device(ev.device)
    metrics, consistency, unavailable = build_eval_metrics(ev, device)
    centres = zoom_centres(ev)
    for name, reason in unavailable.items():
        log.warning("Metric %s unavailable: %s", name, reason)
    sources = used_sources(ev)
    backbone = load_backbone(ev.backbone.name, ev.backbone, device) if any(m in ev.methods for m in PROMPTED_METHODS) else None
    prompter = None
    if any(is_vlm(s) for s in sources):
        adapter = ev.adapter if any("vlm+adapter" in s for s in sources) else None
        prompter = VLMPrompter(cfg.policy, adapter, device, ev.max_new_tokens, ev.do_sample, ev.batch_size)
    judge = load_judge(ev.judge, out)  # eval.judge (docs/judge.md); None when it is off
    labels, scales = method_labels(ev), zoom_scales(ev)
    figure = (lambda chains, path: chain_figure(chains, ev.scale, path)) if ev.figures else None
    with progress_bar(len(images), "eval", log) as bar:
        for image in images:
            set_seed(sample_seed(cfg.seed, image.name))
            original, report = open_eval_image(image, ev)
            if original is None:
                reason = next(iter(report.skipped))
                log.warning("Skipped eval image %s", report.examples[reason])
                write_skip(out, image.name, reason, report.examples[reason].removeprefix(f"{image.label}: "))
                bar.update()
                continue
            centre = centres[image.name]
            chains = run_chains(cfg, [start_state(original, ev.process_size)], backbone, prompter, [centre])
            sample = [chains[label][0] for label in labels]
            windows = zoom_windows(ev.process_size, ev.scale, ev.steps, centre)
            references = reference_states(original, ev.process_size, ev.scale, ev.steps, windows)
            scores = score_chains(sample, references, metrics, scales, consistency)
            scores += score_whole_states(sample, original, ev, metrics)
            scores += judged(judge, sample, scales)  # `hallucination` per method and scale; [] without a judge
            write_sample(out, image.name, sample, scores, unavailable, figure)
            log.debug("Evaluated %s", image.label)
            bar.update()
    if judge is not None:
        log.info("Eval: %s", judge.summary())


def wait_for_images(out: Path, names: list[str]) -> None:
    """Rank 0 waits until the other ranks' images are in the record.

    Not a collective barrier: a restarted run's ranks can finish hours apart, past any process
    group's timeout, and a rank that fails makes the launcher stop this one as well."""
    last_log = time.monotonic()
    while left := [n for n in names if not is_finished(out, n)]:
        if time.monotonic() - last_log > WAIT_LOG_S:
            log.info("Waiting for the other ranks: %d images left", len(left))
            last_log = time.monotonic()
        time.sleep(WAIT_POLL_S)


def evaluate(cfg: DictConfig) -> Path:
    """Evaluate this process's share of cfg.eval's images into cfg.output_dir, then merge when all are in."""
    ev = cfg.eval
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    check_eval_config(cfg)
    out = Path(cfg.output_dir)
    images = eval_image_list(ev)
    open_record(out, cfg)
    shard = current_shard(ev)
    task_images = shard.of_task(images)
    mine = shard.of_process(images)
    todo = [image for image in mine if not is_finished(out, image.name)]
    log.info("Eval (%s): %d of %d images here, %d already in %s", shard.describe(), len(mine), len(images),
             len(mine) - len(todo), out)
    if todo:
        evaluate_images(cfg, out, todo)
    if shard.world > 1:
        if shard.rank != 0:
            return out
        wait_for_images(out, [image.name for image in task_images])
    missing = missing_images(out, images)
    if missing:
        log.info("%d of %d images are still to be evaluated by other shards; the last to finish writes the tables "
                 "(or: python -m coz_train.eval.merge %s)", len(missing), len(images), out)
        return out
    merge(cfg)
    return out
