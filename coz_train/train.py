"""GRPO training of the Chain-of-Zoom prompt VLM: check -> build -> train.

    python -m coz_train +experiment=smoke                                   # offline, CPU, minutes
    python -m coz_train +experiment=grpo_qwen data.image_dir=/data/LSDIR   # the paper's recipe

One path, down the layers once: `preflight` (coz_train/preflight.py: counts, the run folder, every model
reachable, before any model library loads) -> `check_run` (everything else that needs no weights: rewards,
data, evaluation during training, the `perf` switches, the initial adapter, wandb, TRL's GRPOConfig, the
checkpoint to resume from) -> `build_trainer` (builds only) -> `trainer.train()` -> the final adapter.

The variant is TRL's GRPO (`grpo.loss_type=grpo`: PPO-style clipped ratio, `grpo.epsilon`, plus `grpo.beta`
times the per-token KL to the reference, which is the base model with the LoRA adapters switched off; advantages
are each completion's reward minus its group's mean, over the group's standard deviation). One optimizer step
of the paper's config (conf/grpo/default.yaml: 8 prompts x 8 generations = 64 rollouts per device) does, in order:
1. data: 8 zoom-pair prompts (previous state + zoomed crop) from the dataset (coz_train/data/);
2. rollouts: the policy samples 8 completions per prompt (TRL's generation; coz_train/perf/merge.py,
   rollout_prefix.py, compiled_decode.py when their switches are on);
3. rewards: each weighted reward scores every completion (coz_train/rewards/: the critic VLM, phrase exclusion,
   repetition; coz_train/rewards/guard.py retries or stops on failure), summed with `rewards.<name>.weight`,
   then normalised within each group into advantages (TRL);
4. reference log-probs with the adapters off (TRL; coz_train/perf/group_prefix.py shares each group's prompt);
5. 8 micro-steps of 8 completions (coz_train/perf/group_batches.py keeps groups whole): the policy's per-token
   log-probs, the clipped objective + KL, backward (TRL's loss);
6. gradient clipping (`grpo.max_grad_norm`), the AdamW step and the learning-rate schedule (TRL / transformers);
7. logging (coz_train/callbacks.py), the tripwires against a collapsing run (coz_train/tripwires.py: warn, or save
   and stop) and, every `grpo.save_steps`, a checkpoint in the official adapter layout with its model card
   (coz_train/trainer.py, checkpoints.py, model_card.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

from coz_train.callbacks import RewardProgressCallback, SampleLogger
from coz_train.checkpoints import (
    CompleteMarkerCallback,
    checkpoint_step,
    finish_from_checkpoint,
    publish_adapter,
)
from coz_train.config import GRPOSection
from coz_train.data import build_zoom_dataset, check_data_config
from coz_train.eval.during_training import EvalDuringTraining, check_eval_during_training
from coz_train.hub import resolve_model
from coz_train.model_card import ModelCardCallback
from coz_train.perf.capabilities import check_capabilities
from coz_train.policy import load_processor, load_vlm, lora_config
from coz_train.policy.adapters import check_adapter_folder, load_adapter
from coz_train.preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from coz_train.preflight import Preflight, critic_needed, preflight, weighted_rewards
from coz_train.rewards import active_rewards, build_rewards
from coz_train.rewards.critic import critic_prefix_wanted
from coz_train.rewards.guard import UpdateGuard, UpdateGuardCallback, guard_rewards
from coz_train.rollout_log import rollout_log
from coz_train.tripwires import TripwireCallback, TripwireStop, check_tripwires
from coz_train.wandb_setup import configure_wandb
from coz_train.zero3 import launched_with_zero3

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


def check_perf_config(cfg: DictConfig, policy_path: str) -> None:
    """The `perf` switches against what the installed libraries offer (coz_train/perf/capabilities.py), the
    policy's architecture and freeze settings, before any weights load."""
    perf = cfg.perf
    check_capabilities(perf)
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
    if launched_with_zero3():
        for switch in ("vision_cache", "merge_adapters_for_generation", "compiled_decode"):
            if perf[switch]:
                raise ValueError(f"perf.{switch} does not work with DeepSpeed ZeRO-3 (sharded weights): set "
                                 f"perf.{switch}=false or use ZeRO-2.")
    if perf.vision_cache and not (cfg.policy.freeze_vision_tower and cfg.policy.freeze_projector):
        raise ValueError("perf.vision_cache=true needs a frozen vision tower and projector "
                         "(policy.freeze_vision_tower=true, policy.freeze_projector=true); set perf.vision_cache=false.")
    if critic_needed(weighted_rewards(cfg.rewards)):  # the rewards' own checks ran in check_run
        critic_prefix_wanted(cfg)


def attach_lora(policy_cfg: DictConfig, model: Any) -> tuple[Any, Any]:
    """(model, peft_config) for the trainer: a new LoRA from policy.lora, or the adapter of policy.init_adapter
    loaded in full and trained on (TRL then keeps a frozen copy of it as the KL reference)."""
    if not policy_cfg.init_adapter:
        return model, lora_config(policy_cfg, model)
    model = load_adapter(model, policy_cfg.init_adapter, is_trainable=True, key="policy.init_adapter")
    config = model.peft_config["default"]
    log.info("policy.init_adapter=%s: r=%s, lora_alpha=%s on %d modules (policy.lora is not used)",
             policy_cfg.init_adapter, config.r, config.lora_alpha, len(config.target_modules))
    return model, None


@dataclass
class RunPlan:
    """What `check_run` found: everything a run needs that is known before any weights load."""

    rewards: list[tuple[str, float, dict[str, Any]]]  # (name, weight, params) of the rewards with a weight
    policy_path: str  # loadable by from_pretrained (a tiny or random model is built by now)
    report_to: list[str]
    args: Any  # TRL's GRPOConfig, checked (batch sizes against num_generations) and kept for the trainer
    resume: str | None  # the checkpoint to resume from


def check_run(cfg: DictConfig, checked: Preflight | None = None) -> RunPlan:
    """Every check of a run that needs no weights, once, in this order: the cheap ones before any model library
    loads (`coz_train.preflight`: counts, the run folder, every model reachable), then the reward names and
    parameters, the data, evaluation during training, the `perf` switches against the libraries and the policy,
    the initial adapter, wandb, TRL's GRPOConfig and the checkpoint to resume from. `checked`: the result of
    `preflight(cfg)` when the caller ran it already (the command line does, before this module is imported)."""
    checked = checked if checked is not None else preflight(cfg)
    rewards = active_rewards(cfg.rewards, cfg)
    for name, weight, _ in rewards:
        if weight < 0:
            log.warning("rewards.%s.weight=%s is negative: GRPO will push completions away from this reward.",
                        name, weight)
    check_data_config(cfg.data)
    check_eval_during_training(cfg)
    policy_path = resolve_model(cfg.policy.name_or_path, "policy.name_or_path", cfg.policy.revision)
    check_perf_config(cfg, policy_path)
    check_tripwires(cfg.tripwires)
    if cfg.policy.init_adapter:
        check_init_adapter(cfg.policy)
    report_to = configure_wandb(cfg)
    # A live GRPOConfig with a ZeRO-3 config makes every from_pretrained shard its weights (zero.Init), and the
    # critic must stay whole: its DeepSpeed config is taken off until the models have loaded (build_trainer).
    args = grpo_args(cfg, [weight for _, weight, _ in rewards], report_to)
    unset_hf_deepspeed_config()
    return RunPlan(rewards, policy_path, report_to, args, checked.resume)


def check_init_adapter(policy_cfg: DictConfig) -> None:
    check_adapter_folder(policy_cfg.init_adapter, "policy.init_adapter")
    if not (policy_cfg.freeze_vision_tower and policy_cfg.freeze_projector):
        raise ValueError("policy.init_adapter trains the given adapter as saved: leave policy.freeze_vision_tower and "
                         "policy.freeze_projector true (the adapter's own modules_to_save still train).")


def build_trainer(cfg: DictConfig, plan: RunPlan | None = None) -> tuple[Any, str | None]:
    """The GRPOTrainer of a checked run (`plan`, from `check_run`; checked here when not given), with the `perf`
    fast path installed, and the checkpoint to resume from. Builds only: data, processor, policy (+ LoRA),
    rewards (the critic loads here), TRL's trainer."""
    from transformers import set_seed

    plan = plan if plan is not None else check_run(cfg)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    set_seed(cfg.seed)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)

    dataset = build_zoom_dataset(cfg.data, cfg.seed, cfg.policy)
    processor = load_processor(plan.policy_path, cfg.policy)
    model = load_vlm(plan.policy_path, cfg.policy)
    model, peft_config = attach_lora(cfg.policy, model)
    reward_funcs, reward_weights = build_rewards(cfg)
    guard = UpdateGuard(cfg.reward_failure.on_failure)
    failure = cfg.reward_failure
    reward_funcs = guard_rewards(reward_funcs, guard, failure.retries, failure.backoff_s, failure.deadline_s)
    args = plan.args
    if getattr(args, "hf_deepspeed_config", None) is not None:  # only with grpo.deepspeed set
        set_hf_deepspeed_config(args.hf_deepspeed_config)  # the models are loaded: the DeepSpeed config back on

    from transformers.trainer_callback import ProgressCallback

    from coz_train.perf.fast_path import FastPath
    from coz_train.trainer import CozGRPOTrainer

    samples = SampleLogger(cfg.output_dir, cfg.logging.sample_every, cfg.logging.sample_count,
                           "wandb" in plan.report_to)
    # the card before CompleteMarkerCallback: a checkpoint is complete with its card written
    # the tripwires first: the metrics they add to a step's logs reach the log file and log_history.jsonl
    tripwires = TripwireCallback(cfg.tripwires, "wandb" in plan.report_to)  # tripwires.enabled=false: no checks
    callbacks = [tripwires, samples, ModelCardCallback(cfg), CompleteMarkerCallback(), PreemptionCallback(),
                 UpdateGuardCallback(guard)]
    if cfg.eval_during_training.every:  # after PreemptionCallback: a preempted step saves without evaluating
        callbacks.append(EvalDuringTraining(cfg, "wandb" in plan.report_to))
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
    if cfg.logging.sample_every > 0:
        samples.logs = rollout_log(trainer, "logging.sample_every", "0", ("completion", "rewards", "images"))
    tripwires.read_completions_of(trainer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RewardProgressCallback())
    log.info(
        "GRPO: %d zoom pairs, rewards %s, %d steps",
        len(dataset), {name: weight for name, weight, _ in plan.rewards}, args.max_steps,
    )
    return trainer, plan.resume


def train(cfg: DictConfig, checked: Preflight | None = None) -> Path:
    """Check, build, train, and save the final adapter to `<output_dir>/adapter`; return that folder.

    On a preemption signal the run saves a checkpoint and exits with PREEMPTED_EXIT_CODE; a tripwire with
    `tripwires.action=stop` saves one and raises `TripwireStop` (what tripped, how to go on). A run resumed after its
    last step (a requeued job that had finished) trains nothing and changes nothing: it is found before the
    checks that need a model library. `checked`: `preflight(cfg)`'s result, when the caller ran it.
    """
    checked = checked if checked is not None else preflight(cfg)
    finished = checked.resume
    if finished and checkpoint_step(finished) >= cfg.grpo.max_steps:
        return finish_from_checkpoint(Path(finished), Path(cfg.output_dir))
    trainer, resume = build_trainer(cfg, check_run(cfg, checked))
    trainer.train(resume_from_checkpoint=resume)
    trainer.remove_fast_path()
    run_dir = Path(cfg.output_dir)
    preemption = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PreemptionCallback))
    if preemption.preempted:
        log.warning("Preempted: checkpoint-%d saved in %s; resume with resume=auto", preemption.stopped_at, run_dir)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    tripwires = next(c for c in trainer.callback_handler.callbacks if isinstance(c, TripwireCallback))
    if tripwires.stopped:  # tripwires.action=stop: a checkpoint is saved, no final adapter
        raise TripwireStop(tripwires.stop_message(run_dir))
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
