"""GRPO training of the Chain-of-Zoom prompt VLM: data -> policy -> rewards -> TRL GRPOTrainer.

    python -m coz_train +experiment=smoke                                   # offline, CPU, minutes
    python -m coz_train +experiment=grpo_qwen data.image_dir=/data/LSDIR   # the paper's recipe

Everything cheap and checkable happens before a model loads: the config schema (Hydra), the
reward names and parameters, and whether the policy and critic can be had at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from coz_train.callbacks import RewardProgressCallback, SampleLogger
from coz_train.checkpoints import (
    CompleteMarkerCallback,
    checkpoint_step,
    finish_from_checkpoint,
    latest_complete,
    publish_adapter,
)
from coz_train.config import GRPOSection
from coz_train.data import build_zoom_dataset, check_data_config
from coz_train.eval.during_training import EvalDuringTraining, check_eval_during_training
from coz_train.hub import resolve_model
from coz_train.model_card import ModelCardCallback
from coz_train.perf.versions import check_tested_versions
from coz_train.policy import load_processor, load_vlm, lora_config
from coz_train.policy.adapters import check_adapter_folder, load_adapter
from coz_train.preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from coz_train.preflight import check_run_config, critic_needed, preflight
from coz_train.rewards import active_rewards, build_rewards
from coz_train.rewards.critic import critic_prefix_wanted
from coz_train.rewards.guard import UpdateGuard, UpdateGuardCallback, guard_rewards
from coz_train.wandb_setup import configure_wandb

log = logging.getLogger(__name__)


def grpo_args(cfg: DictConfig, reward_weights: list[float], report_to: list[str]) -> Any:
    """TRL's GRPOConfig from the `grpo` section: only values that differ from TRL's defaults are passed."""
    from trl import GRPOConfig

    values = OmegaConf.to_container(cfg.grpo, resolve=True)
    if values.get("reward_weights") is not None:
        raise ValueError("grpo.reward_weights is set from rewards.<name>.weight: leave grpo.reward_weights unset.")
    defaults = GRPOSection()
    kwargs = {k: v for k, v in values.items() if v != getattr(defaults, k)}
    run_name = cfg.logging.run_name or f"{cfg.experiment_name}-{Path(cfg.output_dir).name}"
    kwargs.update(output_dir=cfg.output_dir, reward_weights=reward_weights, report_to=report_to, run_name=run_name)
    for old_name, new_name in (("gradient_checkpointing", "activation_checkpointing"),
                               ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old_name in kwargs and hasattr(GRPOConfig, new_name):  # transformers 5 renamed them (and warns)
            kwargs[new_name] = kwargs.pop(old_name)
    if not torch.cuda.is_available() and "dataloader_pin_memory" not in kwargs:
        kwargs["dataloader_pin_memory"] = False  # nothing to pin on a CPU (torch warns at every epoch)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not kwargs.get("use_cpu"):
        # several CPU processes (gloo): without use_cpu the Trainer would not see the process group
        log.info("No GPU and %s processes: grpo.use_cpu=true (DDP over gloo)", os.environ["WORLD_SIZE"])
        kwargs["use_cpu"] = True
    return GRPOConfig(**kwargs)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = latest_complete(cfg.output_dir)
        log.info("resume=auto: %s", found or "no complete checkpoint found, starting fresh")
        return str(found) if found else None
    if not Path(cfg.resume).is_dir():
        raise FileNotFoundError(f"resume='{cfg.resume}' is not a checkpoint folder (use resume=auto|none|<checkpoint-N path>).")
    return cfg.resume


def check_perf_config(cfg: DictConfig, policy_path: str) -> None:
    """The `perf` switches against the library versions, the policy's architecture and freeze settings, before
    any weights load."""
    perf = cfg.perf
    check_tested_versions(perf)
    if perf.group_prefix or perf.vision_cache or perf.rollout_prefix:
        from transformers import AutoConfig

        from coz_train.perf.prefix import SUPPORTED_MODEL_TYPES

        model_type = AutoConfig.from_pretrained(
            policy_path, revision=cfg.policy.revision, trust_remote_code=cfg.policy.trust_remote_code).model_type
        switch = next(f"perf.{name}" for name in ("group_prefix", "vision_cache", "rollout_prefix") if perf[name])
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{switch}=true supports Qwen2-VL / Qwen2.5-VL policies; {cfg.policy.name_or_path} is "
                             f"'{model_type}'. Set {switch}=false.")
    if perf.compiled_decode:
        if cfg.grpo.use_vllm:
            raise ValueError("perf.compiled_decode=true compiles transformers' generate; with grpo.use_vllm=true vLLM "
                             "generates instead. Set perf.compiled_decode=false.")
        from coz_train.perf.compiled_decode import check_cache_implementation

        check_cache_implementation((cfg.grpo.generation_kwargs or {}).get("cache_implementation")
                                   or cfg.grpo.cache_implementation)
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":  # set by `accelerate launch` for ZeRO-3 configs
        for switch in ("vision_cache", "merge_adapters_for_generation", "compiled_decode"):
            if perf[switch]:
                raise ValueError(f"perf.{switch} does not work with DeepSpeed ZeRO-3 (sharded weights): set "
                                 f"perf.{switch}=false or use ZeRO-2.")
    if perf.vision_cache and not (cfg.policy.freeze_vision_tower and cfg.policy.freeze_projector):
        raise ValueError("perf.vision_cache=true needs a frozen vision tower and projector "
                         "(policy.freeze_vision_tower=true, policy.freeze_projector=true); set perf.vision_cache=false.")
    if critic_needed(active_rewards(cfg.rewards)):
        critic_prefix_wanted(cfg)


def attach_lora(policy_cfg: DictConfig, model: Any) -> tuple[Any, Any]:
    """(model, peft_config) for the trainer: a new LoRA from policy.lora, or the adapter of policy.init_adapter
    loaded in full and trained on (TRL then keeps a frozen copy of it as the KL reference)."""
    if not policy_cfg.init_adapter:
        return model, lora_config(policy_cfg, model)
    if not (policy_cfg.freeze_vision_tower and policy_cfg.freeze_projector):
        raise ValueError("policy.init_adapter trains the given adapter as saved: leave policy.freeze_vision_tower and "
                         "policy.freeze_projector true (the adapter's own modules_to_save still train).")
    model = load_adapter(model, policy_cfg.init_adapter, is_trainable=True, key="policy.init_adapter")
    config = model.peft_config["default"]
    log.info("policy.init_adapter=%s: r=%s, lora_alpha=%s on %d modules (policy.lora is not used)",
             policy_cfg.init_adapter, config.r, config.lora_alpha, len(config.target_modules))
    return model, None


_FIND: Any = object()  # build_trainer looks the checkpoint up itself


def build_trainer(cfg: DictConfig, resume: str | None = _FIND) -> tuple[Any, str | None]:
    """Everything up to `trainer.train()`: returns the GRPOTrainer (with the `perf` fast path installed) and the
    checkpoint to resume from (`resume`, when the caller has looked it up already)."""
    from transformers import set_seed

    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    set_seed(cfg.seed)
    check_run_config(cfg)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)

    rewards = active_rewards(cfg.rewards, cfg)
    for name, weight, _ in rewards:
        if weight < 0:
            log.warning("rewards.%s.weight=%s is negative: GRPO will push completions away from this reward.",
                        name, weight)
    check_data_config(cfg.data)
    check_eval_during_training(cfg)
    policy_path = resolve_model(cfg.policy.name_or_path, "policy.name_or_path", cfg.policy.revision)
    if critic_needed(rewards):
        if cfg.critic.backend == "server":
            if not cfg.critic.url:
                raise ValueError("critic.backend=server needs critic.url=http://<host>:<port> (see conf/critic/server.yaml).")
        else:
            resolve_model(cfg.critic.name_or_path, "critic.name_or_path", cfg.critic.revision)
    check_perf_config(cfg, policy_path)
    if cfg.policy.init_adapter:
        check_adapter_folder(cfg.policy.init_adapter, "policy.init_adapter")
    report_to = configure_wandb(cfg)
    # GRPOConfig checks batch sizes against num_generations: built once here, before any model loads, only to check
    # them. A live GRPOConfig with a ZeRO-3 config makes every from_pretrained shard its weights (zero.Init), and the
    # critic must stay whole: the config the trainer uses is built again after the models have loaded.
    grpo_args(cfg, [weight for _, weight, _ in rewards], report_to)
    unset_hf_deepspeed_config()
    if resume is _FIND:
        resume = resume_checkpoint(cfg)

    dataset = build_zoom_dataset(cfg.data, cfg.seed, cfg.policy)
    processor = load_processor(policy_path, cfg.policy)
    model = load_vlm(policy_path, cfg.policy)
    model, peft_config = attach_lora(cfg.policy, model)
    reward_funcs, reward_weights = build_rewards(cfg)
    guard = UpdateGuard(cfg.reward_failure.on_failure)
    failure = cfg.reward_failure
    reward_funcs = guard_rewards(reward_funcs, guard, failure.retries, failure.backoff_s, failure.deadline_s)
    args = grpo_args(cfg, reward_weights, report_to)

    from transformers.trainer_callback import ProgressCallback

    from coz_train.perf.fast_path import FastPath
    from coz_train.trainer import CozGRPOTrainer

    samples = SampleLogger(cfg.output_dir, cfg.logging.sample_every, cfg.logging.sample_count, "wandb" in report_to)
    # the card before CompleteMarkerCallback: a checkpoint is complete with its card written
    callbacks = [samples, ModelCardCallback(cfg), CompleteMarkerCallback(), PreemptionCallback(),
                 UpdateGuardCallback(guard)]
    if cfg.eval_during_training.every:  # after PreemptionCallback: a preempted step saves without evaluating
        callbacks.append(EvalDuringTraining(cfg, "wandb" in report_to))
    trainer = CozGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.install_fast_path(FastPath(cfg.perf))
    samples.trainer = trainer
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RewardProgressCallback())
    log.info(
        "GRPO: %d zoom pairs, rewards %s, %d steps",
        len(dataset), {name: weight for name, weight, _ in rewards}, args.max_steps,
    )
    return trainer, resume


def train(cfg: DictConfig) -> Path:
    """Train and save the final adapter to `<output_dir>/adapter`; return that folder.

    On a preemption signal the run saves a checkpoint and exits with PREEMPTED_EXIT_CODE. A run resumed after its
    last step (a requeued job that had finished) trains nothing and changes nothing.
    """
    preflight(cfg)
    finished = resume_checkpoint(cfg)
    if finished and checkpoint_step(finished) >= cfg.grpo.max_steps:
        return finish_from_checkpoint(Path(finished), Path(cfg.output_dir))
    trainer, resume = build_trainer(cfg, finished)
    trainer.train(resume_from_checkpoint=resume)
    trainer.remove_fast_path()
    run_dir = Path(cfg.output_dir)
    preemption = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PreemptionCallback))
    if preemption.preempted:
        log.warning("Preempted: checkpoint-%d saved in %s; resume with resume=auto", preemption.stopped_at, run_dir)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    adapter_dir = run_dir / "adapter"
    trainer.save_model(str(run_dir / "adapter.partial"))
    if trainer.is_world_process_zero():
        publish_adapter(run_dir / "adapter.partial", adapter_dir)
        log.info("Run folder: %s", run_dir.resolve())
        log.info("LoRA adapter: %s", adapter_dir.resolve())
        log.info("Config: %s   log: %s", run_dir.resolve() / ".hydra" / "config.yaml", run_dir.resolve() / "train.log")
        if "wandb" in trainer.args.report_to:
            log.info("wandb offline/online run files: %s", run_dir.resolve() / "wandb")
    return adapter_dir
