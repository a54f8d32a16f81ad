"""The benchmark's step: whole GRPO steps of `CozGRPOTrainer`, built as a run builds it, plain vs fast.

The trainer comes from `coz_train.train.build_trainer` with the run config the bench was composed with
(`conf/experiment/bench_<size>.yaml` and any override: the models, data, batch and `grpo` settings), so the
step is the one a training run executes: TRL's data loading and preprocessing, generation, the reward
functions with the critic, the log-prob passes, the loss and the optimizer step. The same trainer runs
`bench.warmup + bench.reps` steps per path, each path from the same LoRA weights, seed and prompts:

- `plain`: `perf=plain` (conf/perf/plain.yaml), TRL's own path;
- `fast`: `perf=fast` (conf/perf/fast.yaml), installed as `trainer.install_fast_path(FastPath(...))`, and
  the critic reward's `perf.image_cache` / `perf.critic_prefix` set on its backend (`critic_fast_path`);
- `fast_compiled` (with `bench.compiled_decode=true`): `perf=fast perf.compiled_decode=true`.

A `StepTimer` installed on the trainer splits every step at TRL's phase boundaries (`coz_train.bench.
step_timer`); medians are over the steps after the warm-up ones. On a CPU, `bench.size=real` runs the real
setting's data, batch and image size with the tiny models standing in for the 3B policy and 7B critic
(`STAND_INS`): the models' time is measured apart, so the CPU share of the step (`cpu_s`) is what it measures.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from coz_train.bench.phases.floors import step_floors
from coz_train.bench.phases.timing import Device, free_memory
from coz_train.bench.step_timer import StepTimer, critic_models, summary
from coz_train.config import config_dir
from coz_train.perf.replacement import Replacement

log = logging.getLogger(__name__)

# bench.size=real on a CPU: the real setting's data and batch, tiny models in place of the 3B and 7B
STAND_INS = {"policy": {"name_or_path": "tiny:qwen2_5_vl", "dtype": "float32"},
             "critic": {"name_or_path": "tiny:qwen2_5_vl@1", "dtype": "float32"}, "grpo": {"bf16": False}}


def perf_option(name: str) -> dict:
    """conf/perf/<name>.yaml."""
    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "perf" / f"{name}.yaml"))


def step_paths(compiled_decode: bool, ablate: list[str] | tuple = ()) -> list[tuple[str, dict]]:
    """(name, perf) of each path; `ablate`: switches of perf=fast left off in the fast paths."""
    fast = perf_option("fast")
    unknown = sorted(set(ablate) - {k for k, v in fast.items() if isinstance(v, bool)})
    if unknown:
        raise ValueError(f"bench.ablate: {unknown} are not perf switches; choose from {sorted(fast)}.")
    fast.update(dict.fromkeys(ablate, False))
    paths = [("plain", perf_option("plain")), ("fast", fast)]
    if compiled_decode:
        paths.append(("fast_compiled", dict(fast, compiled_decode=True)))
    return paths


def step_config(cfg: DictConfig, dev: Device, steps: int, out: Path) -> tuple[DictConfig, bool]:
    """The run config of the bench's trainer: `steps` optimizer steps, nothing reported or saved; on a CPU at
    bench.size=real, the tiny models stand in (returned: whether they do)."""
    stand_in = cfg.bench.size == "real" and dev.device.type == "cpu"
    delta: dict[str, Any] = {"output_dir": str(out), "resume": "none", "logging": {"wandb": False},
                             "grpo": {"max_steps": steps, "save_strategy": "no", "report_to": "none"}}
    if stand_in:
        delta = OmegaConf.merge(delta, STAND_INS)
    if dev.device.type == "cpu":
        delta = OmegaConf.merge(delta, {"grpo": {"use_cpu": True}, "critic": {"device": "cpu"}})
    return OmegaConf.merge(cfg, delta), stand_in


@contextlib.contextmanager
def critic_fast_path(trainer: Any, perf: dict) -> Iterator[list[Replacement]]:
    """The critic reward's switches for one path, as `build_critic_reward` sets them from `cfg.perf` in a run
    (`install_critic_switches`); the critic's own objects back afterwards."""
    from coz_train.rewards.critic import HFCritic, install_critic_switches

    changes: list[Replacement] = []
    try:
        for func in trainer.reward_funcs:
            backend = getattr(getattr(func, "func", func), "backend", None)
            if isinstance(backend, HFCritic):
                changes += install_critic_switches(backend, perf)
        if changes:
            log.info("critic fast path: %s", "; ".join(map(str, changes)))
        yield changes
    finally:
        for change in reversed(changes):
            change.undo()


def step_rewards(trainer: Any) -> list[float]:
    """The mean reward of each step of the last `train()` (each starts a new trainer state and log history)."""
    return [round(e["reward"], 5) for e in trainer.state.log_history if "reward" in e]


def run_step_bench(cfg: DictConfig, dev: Device, warmup: int, reps: int, out: Path,
                   progress: Callable[[dict], None] = lambda step: None) -> dict:
    """Whole trainer steps per path (plain, fast[, fast_compiled]): medians, phases, floors, peak memory;
    `progress` gets the result so far after each path (a run cut off keeps what it measured)."""
    from transformers import set_seed

    from coz_train.hub import resolve_model
    from coz_train.perf.fast_path import FastPath
    from coz_train.train import build_trainer, check_perf_config

    run_cfg, stand_in = step_config(cfg, dev, warmup + reps, out)
    paths = step_paths(cfg.bench.compiled_decode, list(cfg.bench.ablate))
    policy_path = resolve_model(run_cfg.policy.name_or_path, "policy.name_or_path", run_cfg.policy.revision)
    for _, perf in paths[1:]:  # every path's switches against the libraries and the policy, before models load
        check_perf_config(OmegaConf.merge(run_cfg, {"perf": perf}), policy_path)
    if stand_in:
        log.info("bench.size=real on the CPU: %s and %s stand in for the real models; the models' time is timed "
                 "apart, the CPU share of the step is what this measures", STAND_INS["policy"]["name_or_path"],
                 STAND_INS["critic"]["name_or_path"])
    trainer, _ = build_trainer(run_cfg)
    trainer.remove_fast_path()  # build_trainer installed perf=plain's (none); each path installs its own
    result: dict[str, Any] = {"config": step_setting(trainer, run_cfg, stand_in), "paths": {}}
    needed = (warmup + reps) * result["config"]["prompts"]
    if result["config"]["dataset_rows"] < needed:
        log.warning("step bench: %d prompts for %d steps of %d: prompts repeat within a path, and the caches find "
                    "their images (faster than a run on fresh images); give more data (data.chains_per_image)",
                    result["config"]["dataset_rows"], warmup + reps, result["config"]["prompts"])
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    peak = peak_memory_reader(dev)
    for name, perf in paths:
        log.info("step bench: %s, %d steps", name, warmup + reps)
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                if n in start:
                    p.copy_(start[n])
        trainer.optimizer = trainer.lr_scheduler = None  # built afresh by train()
        set_seed(cfg.seed)
        timer = StepTimer(dev.sync, peak)
        try:
            trainer.install_fast_path(FastPath(perf))
            with critic_fast_path(trainer, perf):
                timer.install(trainer)
                peak()
                trainer.train()
            result["paths"][name] = dict(summary(timer.steps, warmup), rewards=step_rewards(trainer))
        except Exception as err:  # one path failing (e.g. out of memory) keeps the others
            log.error("step bench: %s failed: %s", name, err)
            result["paths"][name] = {"error": f"{type(err).__name__}: {err}"[:2000],
                                     "traceback": traceback.format_exc()[-4000:]}
        finally:
            timer.remove()
            trainer.remove_fast_path()
            free_memory(dev)
        progress(result)
    result["floors"] = floors_of(trainer, dev, result)
    return result


def peak_memory_reader(dev: Device) -> Any:
    """Peak allocated GPU memory since the last call, in GB (None on a CPU)."""
    def read() -> float | None:
        if not dev.is_cuda:
            return None
        value = torch.cuda.max_memory_allocated(dev.device) / 1e9
        torch.cuda.reset_peak_memory_stats(dev.device)
        return round(value, 2)

    return read


def step_setting(trainer: Any, cfg: DictConfig, stand_in: bool) -> dict:
    args = trainer.args
    prompts = args.per_device_train_batch_size * args.gradient_accumulation_steps // trainer.num_generations
    return dict(policy=cfg.policy.name_or_path, critic=cfg.critic.name_or_path, stand_in_models=stand_in,
                ablate=list(cfg.bench.ablate),
                prompts=prompts, generations=trainer.num_generations, max_completion_length=args.max_completion_length,
                process_size=cfg.data.process_size, max_pixels=cfg.policy.max_pixels, bf16=bool(args.bf16),
                lora_dropout=float(cfg.policy.lora.lora_dropout) if cfg.policy.get("lora") else 0.0,
                gradient_checkpointing=bool(args.gradient_checkpointing), critic_scoring=cfg.critic.scoring,
                dataset_rows=len(trainer.train_dataset), torch_threads=torch.get_num_threads())


def floors_of(trainer: Any, dev: Device, result: dict) -> dict | None:
    """Each phase's floor for the step's work (the plain path's, as measured by the timer)."""
    from coz_train.perf.prefix import unwrap

    work = next((p["work"] for p in result["paths"].values() if p.get("work")), None)
    if not work:
        return None
    critics = critic_models(trainer)
    image = trainer.train_dataset[0]["images"][-1]
    grid = trainer.processing_class.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
    patches = int(grid.prod()) * 2 * work["rows"] // work["generations"]  # two distinct images per prompt
    passes = int(trainer.beta != 0.0) + int(trainer.args.gradient_accumulation_steps
                                            % (trainer.args.steps_per_generation * trainer.num_iterations) != 0)
    return step_floors(dev, unwrap(trainer.model), unwrap(critics[0]) if critics else None, work, patches, passes)
