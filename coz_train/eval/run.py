"""Evaluation: every method's zoom chain on every eval image, metrics per method and scale.

    python -m coz_train.eval +experiment=smoke_eval
    python -m coz_train.eval +experiment=eval_qwen eval.image_dir=/data/DIV2K_train_HR \
        eval.backbone.lora_dir=/models/osediff_sd3 eval.adapter=<run>/adapter

Methods (`eval.methods`): `nearest`, `bicubic` (plain resizes, one result each) and the backbone
methods `onestep`, `recursive`, `recursive_multiscale`, one result per prompt source named
`<method>-<source>`: `onestep-<s>` for s in `eval.onestep_prompt_sources` (default `null`), the
two CoZ chains for s in `eval.prompt_sources` (plus `user` when `eval.user_prompt` is set and no
listed source uses it yet). Geometry and what each prompt source sees: `coz_train.eval.chain`;
the sources (`null`, `user`, `vlm`, `vlm+adapter`, `vlm+user`, `vlm+adapter+user`):
`coz_train.eval.prompter`.

Writes into the run folder: `per-sample/<image>/<method>/<k>.png` (k = 0 is the input) with
`prompts.json`, `per-sample/<image>/chains.png`, `results.csv`, `results.md`, `metrics.png`.
Everything is checked (methods, prompt sources, adapter folder, backbone name, metric names)
before a model loads; the same config and seed give the same images and numbers.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.data.images import NoUsableImagesError, SkipReport, list_image_files, load_rgb, shipped_images
from coz_train.data.zoom import start_state
from coz_train.eval.backbones import load_backbone, registered_backbones
from coz_train.eval.chain import (
    METHODS,
    PROMPTED_METHODS,
    RESAMPLE_METHODS,
    Chain,
    check_geometry,
    onestep_chains,
    recursive_chains,
    reference_states,
    resample_chain,
)
from coz_train.eval.colorfix import COLORFIXES
from coz_train.eval.prompter import PROMPT_SOURCES, VLMPrompter, check_adapter, prompt_source, uses_user_prompt
from coz_train.eval.tables import Results, markdown, write_csv

log = logging.getLogger(__name__)


def _sources(values: Any) -> list[str]:
    """A source list with a bare YAML/CLI `null` read as the "null" source."""
    return ["null" if s is None else s for s in values]


def prompt_sources(ev: DictConfig) -> list[str]:
    """The CoZ chains' sources: eval.prompt_sources, plus `user` when eval.user_prompt is set and no source uses it."""
    sources = _sources(ev.prompt_sources)
    return sources + (["user"] if ev.user_prompt and not any(uses_user_prompt(s) for s in sources) else [])


def source_key(method: str) -> str:
    return "eval.onestep_prompt_sources" if method == "onestep" else "eval.prompt_sources"


def method_sources(ev: DictConfig) -> dict[str, list[str]]:
    """Each of eval.methods -> its prompt sources ([] for the plain resizes)."""
    chains, onestep = prompt_sources(ev), _sources(ev.onestep_prompt_sources)
    return {m: (onestep if m == "onestep" else chains) if m in PROMPTED_METHODS else [] for m in ev.methods}


def method_labels(ev: DictConfig) -> list[str]:
    """Result names: the method, or `<method>-<source>` for a method with prompts."""
    labels: list[str] = []
    for method, sources in method_sources(ev).items():
        labels += [f"{method}-{s}" for s in sources] if sources else [method]
    return labels


def used_sources(ev: DictConfig) -> set[str]:
    return {s for sources in method_sources(ev).values() for s in sources}


def check_eval_config(cfg: DictConfig) -> None:
    ev = cfg.eval
    unknown = [m for m in ev.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"eval.methods: {unknown} not among {list(METHODS)}.")
    for key, sources in (("eval.prompt_sources", prompt_sources(ev)),
                         ("eval.onestep_prompt_sources", _sources(ev.onestep_prompt_sources))):
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
    if ev.image_dir and not Path(ev.image_dir).expanduser().is_dir():
        raise FileNotFoundError(f"eval.image_dir='{ev.image_dir}' is not a folder of images.")
    if not ev.image_dir and not ev.shipped_images:
        raise ValueError("No eval images: set eval.image_dir=<folder> (DIV2K / DIV8K train in the paper).")


def eval_images(ev: DictConfig) -> list[tuple[str, Any]]:
    """(name, original RGB image) pairs; unreadable files are skipped and counted."""
    report = SkipReport()
    if ev.image_dir:
        root = Path(ev.image_dir).expanduser()
        sources = [(str(p.relative_to(root).with_suffix("")), p) for p in list_image_files(root)]
    else:
        sources = [(name.split(":", 1)[1], image) for name, image in shipped_images(list(ev.shipped_images))]
    images = []
    for name, source in sources:
        image = load_rgb(source, name, ev.process_size, ev.small_images, ev.max_image_pixels, report)
        if image is not None:
            images.append((re.sub(r"[^\w.+-]", "_", name), image))
        if ev.max_images is not None and len(images) >= ev.max_images:
            break
    if report.total:
        log.warning("Skipped %d eval images: %s", report.total, report.summary())
    if not images:
        raise NoUsableImagesError(f"No usable eval image ({report.summary()}): check eval.image_dir.")
    return images


def eval_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def run_chains(cfg: DictConfig, starts: list, backbone: Any, prompter: VLMPrompter | None) -> dict[str, list[Chain]]:
    ev = cfg.eval
    chains: dict[str, list[Chain]] = {}
    for label in method_labels(ev):
        method, _, source = label.partition("-")
        if method in RESAMPLE_METHODS:
            chains[label] = [resample_chain(s, method, ev.scale, ev.steps) for s in starts]
            log.info("%s: done", label)
            continue
        prompts = prompt_source(source, prompter, ev.user_prompt)
        if method == "onestep":
            chains[label] = onestep_chains(starts, backbone, ev.scale, ev.steps, prompts, label, ev.batch_size)
        else:
            chains[label] = recursive_chains(starts, backbone, prompts, label, ev.scale, ev.steps, ev.colorfix,
                                             ev.batch_size, single_image=method == "recursive")
        log.info("%s: done", label)
    return chains


def _score(metric: Any, image: Any, reference: Any) -> float:
    fn = metric if callable(metric) else metric.fn
    return float(fn(image, reference))


def save_sample(folder: Path, chains: list[Chain]) -> None:
    for chain in chains:
        sub = folder / chain.method
        sub.mkdir(parents=True, exist_ok=True)
        for k, state in enumerate(chain.states):
            state.save(sub / f"{k}.png")
        (sub / "prompts.json").write_text(json.dumps({str(k + 1): p for k, p in enumerate(chain.prompts)}, indent=1))


def evaluate(cfg: DictConfig) -> Path:
    from transformers import set_seed

    from coz_train.eval.figures import chain_figure, metric_plots
    from coz_train.eval.metrics import build_metrics

    ev = cfg.eval
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    set_seed(cfg.seed)
    check_eval_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = eval_device(ev.device)
    metrics, unavailable = build_metrics(list(ev.metrics), device)
    for name, reason in unavailable.items():
        log.warning("Metric %s unavailable: %s", name, reason)

    images = eval_images(ev)
    sources = used_sources(ev)
    needs_backbone = any(m in ev.methods for m in PROMPTED_METHODS)
    backbone = load_backbone(ev.backbone.name, ev.backbone, device) if needs_backbone else None
    prompter = None
    if any(s.startswith("vlm") for s in sources):
        adapter = ev.adapter if any("vlm+adapter" in s for s in sources) else None
        prompter = VLMPrompter(cfg.policy, adapter, device, ev.max_new_tokens, ev.do_sample, ev.batch_size)

    results = Results()
    labels = method_labels(ev)
    scales = [ev.scale**k for k in range(1, ev.steps + 1)]
    for name, original in images:
        start = start_state(original, ev.process_size)
        chains = run_chains(cfg, [start], backbone, prompter)
        references = reference_states(original, ev.process_size, ev.scale, ev.steps)
        sample_chains = [chains[label][0] for label in labels]
        save_sample(out / "per-sample" / name, sample_chains)
        if ev.figures:
            chain_figure(sample_chains, ev.scale, out / "per-sample" / name / "chains.png")
        for chain in sample_chains:
            for k, scale in enumerate(scales, start=1):
                for metric_name, metric in metrics.items():
                    reference = references[k - 1]
                    if metric.full_reference and reference is None:
                        continue
                    results.add(chain.method, scale, metric_name, _score(metric, chain.states[k], reference))
        log.info("Evaluated %s", name)

    rows = results.rows()
    higher = {name: m.higher_is_better for name, m in metrics.items()}
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(markdown(rows, higher, unavailable, labels, scales))
    if ev.figures:
        metric_plots(rows, higher, out / "metrics.png")
    log_to_wandb(cfg, out, rows, unavailable)
    log.info("Results: %s", (out / "results.md").resolve())
    return out


def log_to_wandb(cfg: DictConfig, out: Path, rows: list, unavailable: dict[str, str]) -> None:
    """The results table, the metric plot and every sample's chain figure, when wandb is on."""
    from coz_train.wandb_setup import configure_wandb

    if configure_wandb(cfg) == ["none"]:
        return
    import wandb
    from omegaconf import OmegaConf

    name = cfg.logging.run_name or f"{cfg.experiment_name}-{out.name}"
    run = wandb.init(project=cfg.logging.project, name=name, dir=str(out), job_type="eval",
                     config=OmegaConf.to_container(cfg, resolve=True))
    table = wandb.Table(columns=["method", "scale", "metric", "mean", "std", "n"])
    for r in rows:
        table.add_data(r.method, r.scale, r.metric, r.mean, r.std, r.n)
    payload: dict[str, Any] = {"results": table}
    if unavailable:
        payload["unavailable_metrics"] = wandb.Table(columns=["metric", "reason"], data=[list(i) for i in unavailable.items()])
    if (out / "metrics.png").is_file():
        payload["metrics_vs_scale"] = wandb.Image(str(out / "metrics.png"))
    figures = sorted((out / "per-sample").glob("*/chains.png"))
    if figures:
        payload["chains"] = [wandb.Image(str(f), caption=f.parent.name) for f in figures]
    run.log(payload)
    run.finish()
