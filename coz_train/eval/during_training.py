"""Evaluation during training: the CoZ chain with the adapter being trained, every N optimizer steps.

    python -m coz_train +experiment=smoke eval_during_training.every=2          # offline, CPU
    python -m coz_train +experiment=grpo_qwen data.image_dir=/data/LSDIR eval_during_training.every=500 \
        eval_during_training.image_dir=/data/DIV2K_valid_HR eval_during_training.max_images=4 \
        eval/backbone@eval_during_training.backbone=osediff_sd3 eval_during_training.backbone.lora_dir=/models/osediff

The `eval_during_training` section has the keys of `eval` (the same checks, the same chain) plus
`every`, and is evaluated as the stand-alone evaluation does (`coz_train.eval.run.evaluate_images`):
every method zooms around each image's `zoom_centre` / `zoom_centres` entry (the centre by default)
and the ground truth follows; `metrics` and the cross-scale consistency scores of
`consistency_metrics` (`consistency_<m>`, `projected_<m>`; docs/consistency.md) are scored, and
with `eval_during_training.judge` naming a model (`eval/judge@eval_during_training.judge=<preset>`)
the hallucination judge (docs/judge.md) adds `hallucination`, its answers cached in
`<run>/eval_during_training/judge_cache/` (or `judge.cache_dir`). Choices:
- The live policy writes the prompts (`vlm+adapter`; `vlm` is the same model with the adapter
  switched off): nothing is saved or reloaded. It generates in eval mode under `torch.no_grad`, its
  train mode restored afterwards, and the random state of python, numpy and torch is restored too,
  so a run draws the same random numbers with or without evaluations.
- Held-out images only: a folder that is, contains or lies inside `data.image_dir` (or a local
  `data.dataset`) is refused, and so are shipped images the training itself uses.
- Rank zero evaluates; the other ranks wait at a barrier (accelerate's state). A long evaluation
  must fit in the process group's timeout (`grpo.ddp_timeout`, 1800 s by default).
- Timing: TRL's `step_time` is measured inside `training_step` and excludes the evaluation, which
  runs after the optimizer step (`on_step_end`); its own wall time is logged as
  `eval_during_training/seconds` (and `/total_seconds`). `train_runtime`, `train_*_per_second` and
  the progress bar's ETA are wall clock from the start of training and include it.
- A failing evaluation never stops training: it is logged at WARNING with the error, its traceback
  goes to `step-<N>/error.txt` and `eval_during_training/failed = 1` to the logs.
- The held-out images, backbone, metrics and judge load at the first evaluation and are kept.
- The stand-alone evaluation's shards do not apply (rank zero evaluates every held-out image):
  `num_shards` other than 1 is refused.

Each evaluation writes `<run>/eval_during_training/step-<N>/`: `results.csv`, `results.md`,
`prompts.json` and a chain figure per image (`chains-<image>.png`); the per-scale means go into
`trainer.state.log_history`, `log_history.jsonl` and wandb (`eval_during_training/<method>/<metric>/<scale>x`),
the figures to wandb as `eval_during_training/chains`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from transformers import TrainerCallback

from coz_train.callbacks import LOG_HISTORY
from coz_train.sr.prompter import VLMPrompter
from coz_train.zero3 import launched_with_zero3

if TYPE_CHECKING:
    from coz_train.eval.consistency import ConsistencyScores
    from coz_train.eval.judge import HallucinationJudge
    from coz_train.sr.chain import Centre

log = logging.getLogger(__name__)

SECTION = "eval_during_training"


def eval_view(section: DictConfig) -> DictConfig:
    """`{"eval": section}`: the shape the evaluation's own functions read their keys from."""
    return OmegaConf.create({"eval": OmegaConf.to_container(section, resolve=True)})


def section_keys(text: str) -> str:
    """An evaluation message with its `eval.<key>` names and `eval/<group>=<option>` overrides as this section's."""
    text = re.sub(r"(?<![\w./])eval/(\w+)=", rf"eval/\1@{SECTION}.\1=", text)
    return re.sub(r"(?<![\w.])eval\.", f"{SECTION}.", text)


def _renamed(error: Exception) -> Exception:
    """The evaluation's error with its `eval.` keys named as this section's."""
    return type(error)(section_keys(str(error)))


def check_eval_during_training(cfg: DictConfig) -> None:
    """Everything about `eval_during_training` that can be checked before a model loads (nothing when off)."""
    from coz_train.eval.methods import check_eval_config
    from coz_train.image_quality import METRIC_NAMES
    from coz_train.sr.prompter import as_base

    section = cfg.eval_during_training
    if section.every < 0:
        raise ValueError(f"{SECTION}.every={section.every}: evaluate every N optimizer steps (N >= 1), or 0 for never.")
    if not section.every:
        return
    if section.adapter:
        raise ValueError(f"{SECTION}.adapter='{section.adapter}': the adapter evaluated is the one being trained "
                         f"(prompt source vlm+adapter); leave {SECTION}.adapter null.")
    if section.num_shards != 1 or section.shard != 0:
        raise ValueError(f"{SECTION}.shard={section.shard} of {SECTION}.num_shards={section.num_shards}: rank zero "
                         "evaluates every held-out image during training; shards are for the stand-alone evaluation "
                         f"(python -m coz_train.eval). Leave {SECTION}.shard=0 and {SECTION}.num_shards=1.")
    if launched_with_zero3() or cfg.grpo.get("fsdp"):
        raise ValueError(f"{SECTION}.every>0 needs the whole policy on rank zero, which generates alone: not with "
                         f"DeepSpeed ZeRO-3 or FSDP (sharded weights). Use ZeRO-2 / DDP or set {SECTION}.every=0.")
    view = eval_view(section)
    for key in ("prompt_sources", "onestep_prompt_sources"):  # the live adapter needs no eval.adapter folder
        view.eval[key] = [as_base(s) if isinstance(s, str) else s for s in view.eval[key]]
    try:
        check_eval_config(view)
    except (ValueError, FileNotFoundError) as err:
        raise _renamed(err) from None
    unknown = [name for name in section.metrics if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"{SECTION}.metrics: unknown metric(s) {unknown}; supported: {list(METRIC_NAMES)}.")
    check_backbone(section.backbone)
    check_held_out(cfg)


def check_backbone(backbone: DictConfig) -> None:
    """The backbone's code imports and its files are where the config says (loading it is left to the first eval)."""
    from coz_train.sr.backbones import backbone_uses_prompt

    key = f"{SECTION}.backbone"
    try:
        uses_prompt = backbone_uses_prompt(backbone.name, f"{key}.name")
    except ImportError as err:
        raise ValueError(f"{key}.name={backbone.name} cannot be loaded here: {err}") from None
    if not uses_prompt:
        log.warning("%s.name=%s ignores prompts: its metrics do not move with the adapter, only the prompts in the "
                    "figures do.", key, backbone.name)
    if backbone.name == "realesrgan_x4plus":
        from coz_train.sr.backbones.realesrgan import ncnn_model_files

        ncnn_model_files()
    if backbone.name == "osediff_sd3":
        if not backbone.lora_dir or not Path(backbone.lora_dir).expanduser().is_dir():
            raise ValueError(f"{key}.name=osediff_sd3 needs {key}.lora_dir=<folder with the OSEDiff-SD3 LoRA files "
                             f"(model_20001.pkl, vae_encoder_20001.pt) or a CoZ ckpt/ folder>; got {backbone.lora_dir}.")


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_held_out(cfg: DictConfig) -> None:
    """The evaluation's images are not training images: no folder overlap, no shipped image the training uses."""
    section, data = cfg.eval_during_training, cfg.data
    if section.image_dir:
        held_out = Path(section.image_dir).expanduser().resolve()
        for key in ("image_dir", "dataset"):
            value = data.get(key)
            if value and Path(value).expanduser().exists() and _overlaps(held_out, Path(value).expanduser().resolve()):
                raise ValueError(f"{SECTION}.image_dir='{section.image_dir}' overlaps the training images "
                                 f"(data.{key}='{value}'): evaluate on held-out images, in a folder outside it.")
        return
    if data.image_dir or data.dataset:
        return
    used = list(data.shipped_images)
    if data.max_images is not None and data.small_images != "skip":  # with skip, later images stand in
        used = used[: data.max_images]
    shared = [name for name in section.shipped_images if name in used]
    if shared:
        raise ValueError(f"{SECTION}.shipped_images has {shared}, which the training uses (data.shipped_images"
                         + (f", the first data.max_images={data.max_images}" if len(used) < len(data.shipped_images)
                            else "") + f"): choose others, e.g. {SECTION}.shipped_images="
                         f"[{','.join(n for n in data.shipped_images if n not in used) or 'camera'}], or set "
                         f"{SECTION}.image_dir=<held-out folder>.")


class LivePolicyPrompter(VLMPrompter):
    """The evaluation's VLM prompts written by the policy being trained: its LoRA is the `vlm+adapter` source and
    the same model with the adapter switched off is `vlm`. Nothing is loaded, so `VLMPrompter.__init__` is not run."""

    def __init__(self, model: Any, processor: Any, max_new_tokens: int, do_sample: bool, batch_size: int):
        from accelerate.utils import is_peft_model

        self.model, self.processor = model, processor
        self.device = next(model.parameters()).device
        self.has_adapter = is_peft_model(model)
        self.max_new_tokens, self.do_sample, self.batch_size = max_new_tokens, do_sample, batch_size

    def _generate(self, pairs: list[list[Any]]) -> list[str]:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # TRL pads per call; the processor is shared
        try:
            return super()._generate(pairs)
        finally:
            tokenizer.padding_side = side


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the evaluation; the model's train mode and every random state restored."""
    was_training = model.training
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        model.train(was_training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@dataclass(frozen=True)
class HeldOutImage:
    name: str  # EvalImage.name: the name results, prompts.json and the figures use
    original: Image.Image
    centre: Centre  # where every method zooms (eval_during_training.zoom_centre / zoom_centres; else the centre)


class EvalDuringTraining(TrainerCallback):
    """Every `eval_during_training.every` optimizer steps: evaluate on rank zero, log, let the other ranks wait."""

    def __init__(self, cfg: DictConfig, use_wandb: bool):
        self.every = cfg.eval_during_training.every
        self.view = eval_view(cfg.eval_during_training)
        self.folder = Path(cfg.output_dir) / SECTION
        self.use_wandb = use_wandb
        self.images: list[HeldOutImage] | None = None
        self.backbone: Any = None
        self.metrics: dict[str, Any] | None = None
        self.consistency: ConsistencyScores | None = None
        self.judge: HallucinationJudge | None = None
        self.unavailable: dict[str, str] = {}
        self.total_s = 0.0

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if step % self.every:
            return
        if control.should_training_stop and step < state.max_steps:  # a preemption: the checkpoint comes first
            log.info("%s: skipped at step %d, training stops early", SECTION, step)
            return
        if state.is_world_process_zero:
            scalars, figures = self.run(step, model, processing_class)
            self.record(args, state, scalars, figures)
        from accelerate import PartialState

        PartialState().wait_for_everyone()

    def run(self, step: int, model: Any, processor: Any) -> tuple[dict[str, float], list[Path]]:
        """(scalars to log, figure files); a failure is reported here and never raised."""
        out = self.folder / f"step-{step}"
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            scalars, figures = self.evaluate(out, model, processor)
        except Exception as err:  # an evaluation never stops training
            log.warning("%s at step %d failed (training goes on; traceback in %s): %s: %s", SECTION, step,
                        out / "error.txt", type(err).__name__, section_keys(str(err)))
            (out / "error.txt").write_text(traceback.format_exc())
            scalars, figures = {f"{SECTION}/failed": 1.0}, []
        seconds = time.perf_counter() - started
        self.total_s += seconds
        scalars.update({f"{SECTION}/seconds": round(seconds, 3), f"{SECTION}/total_seconds": round(self.total_s, 3)})
        return scalars, figures

    def _load(self) -> None:
        from coz_train.devices import rank_device
        from coz_train.eval.images import eval_image_list, open_eval_image, zoom_centres
        from coz_train.eval.judge import judge_enabled, load_judge
        from coz_train.eval.run import build_eval_metrics
        from coz_train.sr.backbones import load_backbone

        ev = self.view.eval
        device = rank_device(ev.device)
        if self.images is None:
            centres = zoom_centres(ev)  # checked before training; by image name, the centre where none is given
            images = []
            for image in eval_image_list(ev):
                original, report = open_eval_image(image, ev)
                if original is None:
                    log.warning("%s: held-out image %s skipped: %s", SECTION, image.label, report.summary())
                else:
                    images.append(HeldOutImage(image.name, original, centres[image.name]))
            if not images:
                raise ValueError(f"{SECTION}: none of the held-out images can be used (see the warnings above).")
            self.images = images
        if self.backbone is None:
            self.backbone = load_backbone(ev.backbone.name, ev.backbone, device)
        if self.metrics is None:
            self.metrics, self.consistency, self.unavailable = build_eval_metrics(ev, device)
            for name, reason in self.unavailable.items():
                log.warning("%s: metric %s unavailable: %s", SECTION, name, reason)
        if self.judge is None and judge_enabled(ev.judge):  # its answers cached under <run>/eval_during_training/
            self.judge = load_judge(ev.judge, self.folder)

    def evaluate(self, out: Path, model: Any, processor: Any) -> tuple[dict[str, float], list[Path]]:
        """As the stand-alone evaluation (`coz_train.eval.run.evaluate_images`) on the held-out images, the live
        policy prompting; loading, scoring and judging inside `evaluation_mode` too, so none of it moves the
        training's random state."""
        from accelerate.utils import extract_model_from_parallel

        from coz_train.data.zoom import start_state
        from coz_train.eval.figures import chain_figure
        from coz_train.eval.judge import judged
        from coz_train.eval.methods import method_labels, zoom_scales
        from coz_train.eval.run import run_chains, score_chains, score_whole_states
        from coz_train.eval.tables import Results, higher_is_better, markdown, write_csv
        from coz_train.sr.chain import reference_states, zoom_windows

        ev = self.view.eval
        policy = extract_model_from_parallel(model)
        prompter = LivePolicyPrompter(policy, processor, ev.max_new_tokens, ev.do_sample, ev.batch_size)
        labels, scales = method_labels(ev), zoom_scales(ev)
        results, figures, prompts = Results(), [], {}
        with evaluation_mode(policy):
            self._load()  # in here too: building a model (a tiny judge from its seed) may seed torch
            starts = [start_state(image.original, ev.process_size) for image in self.images]
            chains = run_chains(self.view, starts, self.backbone, prompter, [image.centre for image in self.images])
            for i, image in enumerate(self.images):
                windows = zoom_windows(ev.process_size, ev.scale, ev.steps, image.centre)
                references = reference_states(image.original, ev.process_size, ev.scale, ev.steps, windows)
                sample = [chains[label][i] for label in labels]
                prompts[image.name] = {chain.method: chain.prompts for chain in sample}
                scores = score_chains(sample, references, self.metrics, scales, self.consistency)
                scores += score_whole_states(sample, image.original, ev, self.metrics)
                scores += judged(self.judge, sample, scales)  # `hallucination`; [] without eval_during_training.judge
                for score in scores:
                    results.add(*score)
                if ev.figures:
                    figures.append(out / f"chains-{image.name}.png")
                    chain_figure(sample, ev.scale, figures[-1])
        if self.judge is not None:
            log.info("%s: %s", SECTION, self.judge.summary())
        rows = results.rows()
        write_csv(rows, out / "results.csv")
        higher = {row.metric: higher_is_better(row.metric) for row in rows}  # consistency_*, hallucination included
        (out / "results.md").write_text(markdown(rows, higher, self.unavailable, labels, scales))
        (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
        return {f"{SECTION}/{r.method}/{r.metric}/{r.scale}x": r.mean for r in rows}, figures

    def record(self, args: Any, state: Any, scalars: dict[str, float], figures: list[Path]) -> None:
        """Into `state.log_history`, `log_history.jsonl` and wandb, at this optimizer step."""
        step = state.global_step
        entry = {"step": step, **scalars}
        state.log_history.append(entry)
        with (Path(args.output_dir) / LOG_HISTORY).open("a") as f:
            f.write(json.dumps(entry) + "\n")
        log.info("%s step %d (%.1f s): %s", SECTION, step, scalars[f"{SECTION}/seconds"], self.folder / f"step-{step}")
        if not self.use_wandb:
            return
        import wandb

        if wandb.run is None:
            return
        payload: dict[str, Any] = {**scalars, "train/global_step": step}  # the step axis of transformers' WandbCallback
        if figures:
            payload[f"{SECTION}/chains"] = [wandb.Image(str(f), caption=f"step {step}: {f.stem}") for f in figures]
        wandb.log(payload)
