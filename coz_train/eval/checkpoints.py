"""Every checkpoint of a training run evaluated with one eval config: metric-against-step curves.

    python -m coz_train.eval.checkpoints outputs/grpo_qwen/<time> +experiment=eval_qwen \
        eval.image_dir=/data/DIV2K_train_HR eval.backbone.lora_dir=/models/osediff_sd3
    python -m coz_train.eval.checkpoints outputs/smoke/<time> +experiment=smoke_eval eval.max_images=1
    accelerate launch --num_processes 8 -m coz_train.eval.checkpoints <run> ...   # each step's images over 8 ranks

Step 0 is the base model (the run's `policy.init_adapter` when it started from one) and each
complete `checkpoint-N/` (with its COMPLETE marker; an interrupted save is left out) is step N,
each evaluated as `python -m coz_train.eval` would into `<run>/eval-checkpoints/step-<N>/`:
- step 0 runs the whole eval config, its `vlm+adapter` sources read as `vlm` (the base prompts);
  the results that do not depend on the prompt VLM (`nearest`, `bicubic`, the `null` and `user`
  sources) are made there once and drawn as dashed reference lines;
- step N runs only the methods with a VLM source, each `vlm[...]` source as `vlm+adapter[...]`
  with `eval.adapter=checkpoint-N`. Both are drawn as one curve named by the base label
  (`recursive_multiscale-vlm`).
The policy is the run's own (its `.hydra/config.yaml`) unless a `policy` override is given.
Resumable at two levels: a step whose tables are written is skipped (after checking that it was
made with this eval config), and an interrupted step continues image by image (`record.py`).

Writes `<run>/eval-checkpoints/checkpoint_results.csv` (step, method, scale, metric, mean, std,
n), `checkpoint_results.md` (per metric: step x scale, best in bold) and `checkpoint_curves.png`:
the reward curves of `coz_train.eval.report` on top, below one panel per metric and zoom scale.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from coz_train.checkpoints import checkpoints
from coz_train.cli import add_debug_switch, run_argparse
from coz_train.eval.images import eval_image_list
from coz_train.eval.merge import missing_images
from coz_train.eval.methods import method_sources, onestep_sources, prompt_sources
from coz_train.eval.record import check_record
from coz_train.eval.run import evaluate
from coz_train.sr.prompter import as_adapter, as_base, is_vlm

log = logging.getLogger(__name__)

SWEEP_DIR = "eval-checkpoints"


def sweep_steps(run_dir: Path, init_adapter: str | None) -> list[tuple[int, Path | None]]:
    """(step, adapter folder) for step 0 and every complete checkpoint."""
    steps: list[tuple[int, Path | None]] = [(0, Path(init_adapter) if init_adapter else None)]
    for step, folder, complete in checkpoints(run_dir):
        if complete:
            steps.append((step, folder))
        else:
            log.warning("Leaving out %s: it has no COMPLETE marker (its save was interrupted)", folder)
    return steps


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def step_config(cfg: DictConfig, step: int, adapter: Path | None, sweep_dir: Path) -> DictConfig:
    """The eval config of one step (see the module docstring)."""
    step_cfg = copy.deepcopy(cfg)
    ev = step_cfg.eval
    to_source = as_adapter if adapter else as_base
    chains, onestep = prompt_sources(cfg.eval), onestep_sources(cfg.eval)
    if step == 0:
        ev.prompt_sources = _unique([to_source(s) if is_vlm(s) else s for s in chains])
        ev.onestep_prompt_sources = _unique([to_source(s) if is_vlm(s) else s for s in onestep])
    else:
        ev.methods = [m for m, sources in method_sources(cfg.eval).items() if any(is_vlm(s) for s in sources)]
        ev.prompt_sources = _unique([to_source(s) for s in chains if is_vlm(s)])
        ev.onestep_prompt_sources = _unique([to_source(s) for s in onestep if is_vlm(s)])
        if not any(s.endswith("+user") for s in [*ev.prompt_sources, *ev.onestep_prompt_sources]):
            ev.user_prompt = None  # no `user` results again at every step
    ev.adapter = str(adapter) if adapter else None
    step_cfg.output_dir = str(sweep_dir / f"step-{step}")
    return step_cfg


def step_finished(step_cfg: DictConfig) -> bool:
    out = Path(step_cfg.output_dir)
    if not (out / "results.csv").is_file():
        return False
    check_record(out, step_cfg)
    return not missing_images(out, eval_image_list(step_cfg.eval))


def sweep(run_dir: str | Path, cfg: DictConfig) -> Path:
    """Evaluate every step of the run in run_dir with cfg's eval config; draw the curves; return the sweep folder."""
    from coz_train.eval.step_curves import write_summary

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder: give a training run folder (it holds checkpoint-N/).")
    used = [s for sources in method_sources(cfg.eval).values() for s in sources]
    if not any(is_vlm(s) for s in used):
        raise ValueError(f"eval.prompt_sources / eval.onestep_prompt_sources ({_unique(used)}) have no VLM source, so "
                         "every checkpoint would give the same results: add vlm (e.g. eval.prompt_sources=[null,vlm]).")
    steps = sweep_steps(run_dir, cfg.policy.get("init_adapter"))
    if len(steps) == 1:
        log.warning("%s has no complete checkpoint-N/ yet: only the base model (step 0) is evaluated", run_dir)
    sweep_dir = run_dir / SWEEP_DIR
    done = {}
    for step, adapter in steps:
        step_cfg = step_config(cfg, step, adapter, sweep_dir)
        if step_finished(step_cfg):
            log.info("Step %d: already evaluated in %s, skipped", step, step_cfg.output_dir)
        else:
            log.info("Step %d: evaluating %s", step, adapter or f"the base model {cfg.policy.name_or_path}")
            evaluate(step_cfg)
        done[step] = Path(step_cfg.output_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return sweep_dir  # rank 0 has merged every step and draws the summary
    if all((out / "results.csv").is_file() for out in done.values()):
        write_summary(run_dir, sweep_dir, done, cfg.eval)
    else:
        log.info("Some steps wait for other shards; the last to finish draws the curves (or run this again)")
    return sweep_dir


def sweep_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The eval config from the overrides, with the run's policy unless a `policy` override is given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from coz_train.config import config_dir, register_configs

    GlobalHydra.instance().clear()
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"output_dir={run_dir / SWEEP_DIR}"])
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file() and not any(o.lstrip("+~").startswith("policy") for o in overrides):
        cfg.policy = OmegaConf.merge(cfg.policy, OmegaConf.load(saved).policy)
        log.info("Policy from the run's config: %s", cfg.policy.name_or_path)
    return cfg


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    parser = argparse.ArgumentParser(description="Evaluate every checkpoint of a coz_train run; curves against step.")
    parser.add_argument("run_dir", help="the training run folder (holds checkpoint-N/ and log_history.jsonl)")
    parser.add_argument("overrides", nargs="*", help="eval overrides, as for python -m coz_train.eval")
    add_debug_switch(parser)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    return sweep(run_dir, sweep_config(run_dir, args.overrides))


if __name__ == "__main__":
    run_argparse(main)
