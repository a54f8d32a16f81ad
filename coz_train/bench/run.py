"""Run the benchmark: phase checks on models built from config (`phases/`), then whole trainer steps (`step.py`).

The phase checks come first (the critic's model is freed before the policy's is built), the trainer's steps
last; `bench.json` is written after each, so a run cut off keeps what it measured.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from coz_train.bench import phases as ph
from coz_train.bench.phases import PHASES
from coz_train.bench.report import table, write
from coz_train.bench.workload import SIZES, build_model, grpo_batch, processor_for, shape_of

log = logging.getLogger(__name__)


def device_and_dtype(bench: DictConfig) -> tuple[torch.device, torch.dtype]:
    if bench.device == "auto":
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(bench.device)
    names = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    if bench.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    if bench.dtype not in names:
        raise ValueError(f"bench.dtype='{bench.dtype}' is not one of auto, {', '.join(names)}.")
    return device, names[bench.dtype]


def build_policy(cfg: DictConfig, spec: dict, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """The policy architecture with the configured LoRA (policy.lora), its B matrices random so the LoRA matters."""
    from peft import get_peft_model

    from coz_train.policy import lora_config

    model = build_model(spec, tokenizer, device, dtype, cfg.seed)
    policy = get_peft_model(model, lora_config(cfg.policy, model))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            param.data = (torch.randn(param.shape, generator=generator) * 0.02).to(param.device, param.dtype)
    ph.install(policy)
    return policy.eval()


def wanted_phases(bench: DictConfig, device: torch.device) -> list[str]:
    """bench.phases in a step's order; by default all of them, none at bench.size=real on a CPU (the real
    models do not run there: the step's CPU share is measured with stand-ins)."""
    if bench.phases is None:
        return [] if bench.size == "real" and device.type == "cpu" else list(PHASES)
    unknown = sorted(set(bench.phases) - set(PHASES))
    if unknown:
        raise ValueError(f"bench.phases: unknown {unknown}; choose from {list(PHASES)}.")
    return [p for p in PHASES if p in bench.phases]


def run_bench(cfg: DictConfig) -> dict:
    from coz_train.bench.step import run_step_bench

    bench = cfg.bench
    if bench.critic_scoring not in ph.CRITIC_SCORING:
        raise ValueError(f"bench.critic_scoring='{bench.critic_scoring}' is not one of {', '.join(ph.CRITIC_SCORING)}.")
    shape = shape_of(bench)
    device, dtype = device_and_dtype(bench)
    wanted = wanted_phases(bench, device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    out = Path(cfg.output_dir) / bench.out
    torch.manual_seed(cfg.seed)
    dev = ph.measure_device(device, dtype)
    result: dict[str, Any] = {"meta": meta(cfg, shape, dev), "phases": {}, "step": None}
    log.info("bench %s on %s (%s)", bench.size, result["meta"]["device_name"], dtype)
    if wanted:
        run_phases(cfg, wanted, shape, dev, result, out)
        ph.free_memory(dev)  # the phases' models, before the trainer's load
    if bench.step:
        try:
            def progress(step: dict) -> None:
                write(dict(result, step=step), out)

            result["step"] = run_step_bench(cfg, dev, shape.warmup, shape.reps, out.parent / "trainer", progress)
        except Exception as err:  # the phase results stay
            log.error("step bench failed: %s", err)
            result["step"] = {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    write(result, out)
    print(table(result), flush=True)
    log.info("results: %s", out.resolve())
    return result


def failures(result: dict) -> list[str]:
    """Phases that failed or whose check did not pass, and step paths that failed."""
    failed = [name for name, phase in result["phases"].items()
              if "error" in phase or not (phase.get("check") or {}).get("passed", True)]
    step = result.get("step") or {}
    if "error" in step:
        failed.append("step")
    failed += [f"step/{name}" for name, path in step.get("paths", {}).items() if "error" in path]
    return failed


def run_phases(cfg: DictConfig, wanted: list[str], shape: Any, dev: ph.Device, result: dict, out: Path) -> None:
    """The phase checks, each on its own batch: preprocessing on the CPU, then the critic (freed before the
    policy is built), then the policy phases."""
    bench = cfg.bench
    processor = processor_for(shape)
    S = shape.image_size
    batch = grpo_batch(processor, shape.groups, shape.generations, shape.new_tokens, cfg.seed,
                       image_sizes=[((S, S), (S, S))] * shape.groups, ragged=False, device=dev.device)
    result["meta"]["phase_batch"] = dict(prompt_tokens=int(batch["input_ids"].shape[1] - shape.new_tokens),
                                         image_tokens_per_image=int(batch["image_grid_thw"][0].prod()) // 4)
    spec = SIZES[bench.size]
    runner = None
    if "preprocess" in wanted:
        processors = tuple(processor_for(shape) for _ in range(4))
        run_phase(result, "preprocess",
                  lambda: ph.preprocess_phase(cfg, processors, batch, dev, shape, check=bench.check), out, dev)
    if "critic" in wanted:
        run_phase(result, "critic", lambda: ph.critic_phase(cfg, spec["critic"], processor, batch, dev, shape,
                                                            scoring=bench.critic_scoring, check=bench.check), out, dev)
    for name in [p for p in wanted if p in ph.POLICY_PHASES]:
        if runner is None:
            policy = build_policy(cfg, spec["policy"], processor.tokenizer, dev.device, dev.dtype)
            runner = ph.PolicyBench(dev, shape, processor, batch, policy, static_cache=bench.static_cache,
                                    check=bench.check, compiled_decode=bench.compiled_decode)
        run_phase(result, name, functools.partial(ph.POLICY_PHASES[name], runner), out, dev)


def run_phase(result: dict, name: str, fn: Any, out: Path, dev: ph.Device) -> None:
    log.info("phase %s", name)
    try:
        result["phases"][name] = fn()
        phase = result["phases"][name]
        check = {k: v for k, v in (phase.get("check") or {}).items() if k != "traceback"} or None
        log.info("  plain %.4f s, fast %.4f s (x%.2f), check %s", phase["plain"]["s"], phase["fast"]["s"],
                 phase["plain"]["s"] / phase["fast"]["s"], check)
    except Exception as err:  # one phase failing (e.g. out of memory) still reports the others
        result["phases"][name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
        log.error("phase %s failed: %s", name, err)
    ph.free_memory(dev)  # e.g. the critic, built inside its phase, before the policy is built
    write(result, out)


def meta(cfg: DictConfig, shape: Any, dev: Any) -> dict:
    import transformers
    import trl

    name = torch.cuda.get_device_name(dev.device) if dev.is_cuda else platform.processor() or platform.machine()
    return dict(
        size=cfg.bench.size, device=str(dev.device), device_name=name, dtype=str(dev.dtype).removeprefix("torch."),
        matmul_TFLOPs=round(dev.peak_flops / 1e12, 2), copy_GBps=round(dev.bandwidth / 1e9, 1),
        phase_shape=vars(shape), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__),
        config=OmegaConf.to_container(cfg.bench, resolve=True),
    )
