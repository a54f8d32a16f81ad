"""The README.md of every adapter folder a training run writes: what it is, how it was made, how to load it.

TRL writes a draft card into the run folder at every checkpoint save (`GRPOTrainer._save_checkpoint` calls
`create_model_card`; for a local policy it reads "fine-tuned version of [None](https://huggingface.co/None)") and
PEFT one into each adapter folder (`save_pretrained`); neither knows the base model's hub id, the rewards or the
data. `ModelCardCallback.on_save` runs after both and writes this project's card into `checkpoint-N/` and the run
folder; at the end of training it writes the run folder's card once more, for the final step, and
`coz_train.checkpoints.publish_adapter` puts that card into `adapter/`.

Register it with the run's config beside the other callbacks: `ModelCardCallback(cfg)`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

CARD = "README.md"
MARK = "<!-- coz_train model card -->"
_RUN_NOTE = re.compile(r"<!-- run folder -->\n.*?<!-- /run folder -->\n\n", re.S)
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "coz_train")
GRPO_SHOWN = ("learning_rate", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
              "beta", "loss_type", "temperature", "max_completion_length")
OFFICIAL_BASE = "Qwen/Qwen2.5-VL-3B-Instruct"  # what the official inference loads the adapter onto
OFFICIAL_COMMAND = """python inference_coz.py \\
  -i samples \\
  -o inference_results/coz_vlmprompt \\
  --rec_type recursive_multiscale \\
  --prompt_type vlm \\
  --lora_path ckpt/SR_LoRA/model_20001.pkl \\
  --vae_path ckpt/SR_VAE/vae_encoder_20001.pt \\
  --vlm_lora_path <this folder> \\
  --pretrained_model_name_or_path 'stabilityai/stable-diffusion-3-medium-diffusers' \\
  --ram_ft_path ckpt/DAPE/DAPE.pth \\
  --ram_path ckpt/RAM/ram_swin_large_14m.pth"""


def is_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).expanduser().exists()


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process: `python -m coz_train ...` for the training entry point."""
    argv = list(sys.argv if argv is None else argv)
    main = Path(argv[0]) if argv else Path()
    if main.name == "__main__.py" and main.parent.name == "coz_train":
        return shlex.join(["python", "-m", "coz_train", *argv[1:]])
    return shlex.join(["python", *argv])


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _code(value: Any, table: bool = False) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = "`" + text.replace("`", "'") + "`"
    return text.replace("|", "\\|") if table else text


def _pinned(revision: str | None) -> str:
    return _code(revision) if revision else "not pinned"


def _lora_lines(policy: DictConfig, model: Any) -> list[str]:
    config = getattr(model, "peft_config", {}).get("default") if model is not None else None
    lines = []
    if policy.init_adapter:
        lines.append(f"Started from the adapter {_code(policy.init_adapter)} (`policy.init_adapter`) with its own settings "
                     "(`policy.lora` not used); it is also the KL reference.")
    if config is None:
        return lines + ["No LoRA config was found on the trained model."]
    modules = config.target_modules
    modules = modules if isinstance(modules, str) else sorted(modules or [])
    return lines + [f"- r: {config.r}", f"- lora_alpha: {config.lora_alpha}", f"- lora_dropout: {config.lora_dropout}",
                    f"- target_modules (as trained; `adapter_config.json` has them as a regex that both module layouts "
                    f"resolve): {_code(modules)}",
                    f"- modules_to_save: {_code(sorted(config.modules_to_save or []))}"]


def _reward_rows(cfg: DictConfig) -> list[str]:
    rows = ["| reward | weight | parameters |", "|---|---|---|"]
    for name, entry in cfg.rewards.items():
        params = OmegaConf.to_container(entry, resolve=True) if entry is not None else {}
        weight = params.pop("weight", 0.0)
        if not weight:
            continue
        shown = [_code(params, table=True)] if params else []
        if name == "critic" or params.get("critic_judge"):
            critic = cfg.critic
            shown.append(f"critic {_code(critic.name_or_path, table=True)} (revision {_pinned(critic.revision)}, "
                         f"{critic.backend} backend, {critic.scoring} scoring, score_max {critic.score_max})")
        rows.append(f"| {name} | {weight:g} | {'; '.join(shown) or '-'} |")
    return rows


def _data_lines(data: DictConfig, zoom_pairs: int | None) -> list[str]:
    if data.dataset:
        source = f"the dataset {_code(data.dataset)} (split {_code(data.dataset_split)})"
    elif data.image_dir:
        source = f"the image folder {_code(data.image_dir)}"
    else:
        source = f"images shipped with scikit-image {_code(list(data.shipped_images))}"
    limit = f", at most {data.max_images} images" if data.max_images else ""
    scales = ", ".join(f"{data.scale ** k}x" for k in range(1, data.depth + 1))
    return [f"- images: {source}{limit}",
            f"- zoom depth {data.depth} ({scales}), each step crops 1/{data.scale} of each side "
            f"({data.crop} crop), upscaler {_code(data.upscaler)}, process_size {data.process_size}",
            f"- zoom pairs: {zoom_pairs if zoom_pairs is not None else 'not recorded'}"]


def model_card(cfg: DictConfig, model: Any, step: int, zoom_pairs: int | None, final: bool) -> str:
    """The card of the adapter a run has at `step` (`final`: the adapter published as `adapter/`)."""
    policy = cfg.policy
    base = policy.name_or_path
    max_steps = cfg.grpo.max_steps
    kind = "final adapter" if final else f"checkpoint at step {step}"
    front = ["---", "library_name: peft"] + ([f"base_model: {base}"] if is_hub_id(base) else [])
    front += ["tags:", "- coz_train", "- chain-of-zoom", "- grpo", "- lora", "---", MARK, ""]
    weights = " + ".join(f"{float(entry.weight):g} * {name}" for name, entry in cfg.rewards.items()
                         if entry is not None and entry.get("weight"))
    grpo = [f"- {key}: {cfg.grpo[key]}" for key in GRPO_SHOWN if cfg.grpo.get(key) is not None]
    versions = library_versions()
    mismatch = ([f"It loads `{OFFICIAL_BASE}` as the base model: this adapter was trained on {_code(base)}, so it fits "
                 "there only if that model has the same architecture and sizes."] if base != OFFICIAL_BASE else [])
    body = [
        f"# Chain-of-Zoom prompt VLM, GRPO LoRA adapter: {cfg.experiment_name}, {kind}", "",
        f"A LoRA adapter on {_code(base)} that writes the text prompt of each Chain-of-Zoom super-resolution step "
        "from the previous state and its zoomed crop, trained with GRPO by coz_train. "
        f"GRPO steps done: {step} of max_steps {max_steps}.", "",
        "## Base model", "",
        f"- policy.name_or_path: {_code(base)}",
        f"- policy.revision: {_pinned(policy.revision)}", "",
        "## LoRA", "", *_lora_lines(policy, model), "",
        "## Rewards", "", f"R = {weights}", "", *_reward_rows(cfg), "",
        "## Training", "", f"- GRPO steps: {step} / {max_steps}", f"- seed: {cfg.seed}", *grpo, "",
        "## Data", "", *_data_lines(cfg.data, zoom_pairs), "",
        "## Made by", "", "```", command_line(), "```", "",
        "The resolved config is the run folder's `.hydra/config.yaml`.", "",
        "## Library versions", "", "| " + " | ".join(versions) + " |", "|" + "---|" * len(versions),
        "| " + " | ".join(versions.values()) + " |", "",
        "## Loading", "",
        "The tensor names and `target_modules` are in the layout of the official Chain-of-Zoom inference "
        "(github.com/bryanswkim/Chain-of-Zoom; transformers 4.49, peft 0.15.2), which loads the adapter with "
        "`PeftModel.from_pretrained(vlm, args.vlm_lora_path)` and merges it:", "",
        "```", OFFICIAL_COMMAND, "```", "", *mismatch, *([""] if mismatch else []),
        "In coz_train: `python -m coz_train.eval +experiment=eval_qwen eval.adapter=<this folder>` "
        "(prompt source `vlm+adapter`), or `coz_train.policy.adapters.load_adapter(model, \"<this folder>\", "
        "is_trainable=False)` on a loaded base model (either module layout).", "",
    ]
    return "\n".join(front + body)


def run_card(card: str, step: int, final: bool) -> str:
    """The run folder's card: the card of its newest adapter after a note on where the adapters are."""
    which = "the final adapter, `adapter/`" if final else f"`checkpoint-{step}/`, the newest checkpoint"
    note = ("<!-- run folder -->\n> This is a coz_train run folder: the final adapter is `adapter/`, the checkpoints "
            f"`checkpoint-N/`, each with its own card. The card below is that of {which}.\n<!-- /run folder -->\n\n")
    head, mark, body = card.partition(MARK + "\n\n")
    return head + mark + note + body


def is_coz_card(path: Path) -> bool:
    return path.is_file() and MARK in path.read_text(errors="replace")


def adapter_card(run_card_text: str) -> str:
    """The adapter's own card from the run folder's card (the note on the run folder left out)."""
    return _RUN_NOTE.sub("", run_card_text, count=1)


def write_card(folder: Path, text: str) -> None:
    tmp = folder / f".{CARD}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / CARD)


class ModelCardCallback(TrainerCallback):
    """Writes the card into each `checkpoint-N/` and the run folder after the trainer's own save (rank zero)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.zoom_pairs: int | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        self.zoom_pairs = len(dataset) if hasattr(dataset, "__len__") else None

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            card = model_card(self.cfg, model, state.global_step, self.zoom_pairs, final=False)
            if folder.is_dir():
                write_card(folder, card)
            write_card(Path(args.output_dir), run_card(card, state.global_step, final=False))
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            card = model_card(self.cfg, model, state.global_step, self.zoom_pairs, final=True)
            write_card(Path(args.output_dir), run_card(card, state.global_step, final=True))
        return control
