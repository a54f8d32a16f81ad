"""Trainer callbacks: a progress bar that shows the reward, and a table of sample prompts.

TRL logs each reward's mean and std (`rewards/<name>/mean`, `/std`), the total (`reward`), KL and
completion lengths every `logging_steps`; these callbacks add what a researcher watches on top.
While the step bar is open, console log lines are written above it (`coz_train.progress.console_through_tqdm`),
not onto its line.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from coz_train.progress import console_through_tqdm
from coz_train.rewards.text import completion_text

log = logging.getLogger(__name__)
record = logging.getLogger("coz_train.record")  # the run's log file only (conf/config.yaml)

LOG_HISTORY = "log_history.jsonl"


class RewardProgressCallback(ProgressCallback):
    """The usual step/ETA progress bar with the latest total and per-reward means as postfix.

    Every log entry is also appended to `<output_dir>/log_history.jsonl` (rank zero), which
    `python -m coz_train.eval.report` turns into reward curves.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._console = ExitStack()

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self._console.enter_context(console_through_tqdm())

    def on_train_end(self, args, state, control, **kwargs):
        self._console.close()
        super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {"reward": logs.get("reward")}
            shown.update({k.split("/")[1]: v for k, v in logs.items() if k.startswith("rewards/") and k.endswith("/mean")})
            self.training_bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if isinstance(v, (int, float))}, refresh=False)
        # the console gets one compact line; every metric goes to the log file, log_history.jsonl and wandb
        if state.is_world_process_zero and logs:
            entry = {"step": state.global_step, **{k: _round(v) for k, v in logs.items()}}
            record.info("step %d: %s", state.global_step, json.dumps(entry))
            if "reward" in logs:
                log.info("%s", compact_line(state.global_step, state.max_steps, logs))
            with (Path(args.output_dir) / LOG_HISTORY).open("a") as f:
                f.write(json.dumps(entry) + "\n")


def compact_line(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """`step 3/20  reward 0.512  critic 0.431  phrase_exclusion 1.000  repetition -0.020  kl 0.0001`"""
    parts = [f"step {step}/{max_steps}", f"reward {logs['reward']:.3f}"]
    parts += [f"{k.split('/')[1]} {v:.3f}" for k, v in logs.items()
              if k.startswith("rewards/") and k.endswith("/mean") and isinstance(v, (int, float))]
    if isinstance(logs.get("kl"), (int, float)):
        parts.append(f"kl {logs['kl']:.4f}")
    return "  ".join(parts)


def _round(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


class SampleLogger(TrainerCallback):
    """Every N steps: a few rollouts (prompt text, both images, per-reward scores) to jsonl and wandb.

    Reads the rollouts TRL keeps for its own completion table (`coz_train.rollout_log`, set as `logs`
    once the trainer is built); TRL's table itself is off (`log_completions=false`) because it fails on
    image prompts.
    """

    def __init__(self, run_dir: str, every: int, count: int, use_wandb: bool):
        self.path = Path(run_dir) / "samples.jsonl"
        self.every, self.count, self.use_wandb = every, count, use_wandb
        self.logs: Any = None  # TRL's completion log, from rollout_log(trainer, ...)

    def on_log(self, args, state, control, **kwargs):
        if self.logs is None or not state.is_world_process_zero or self.every <= 0:
            return
        if state.global_step % self.every and state.global_step != 1:
            return
        logs = self.logs
        if not logs.get("completion"):
            return
        completions = list(logs["completion"])[-self.count :]
        images = list(logs.get("images") or [])[-self.count :]
        rewards = {name: list(values)[-self.count :] for name, values in logs.get("rewards", {}).items()}
        rows = []
        for i, completion in enumerate(completions):
            text = completion_text(completion)
            rows.append({"step": state.global_step, "completion": text, **{k: v[i] for k, v in rewards.items() if i < len(v)}})
        with self.path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        if self.use_wandb:
            self._to_wandb(rows, images, list(rewards))

    @staticmethod
    def _to_wandb(rows: list[dict], images: list, reward_names: list[str]) -> None:
        import wandb

        if wandb.run is None:
            return
        table = wandb.Table(columns=["step", "completion", *reward_names])
        pictures = []
        for i, row in enumerate(rows):
            table.add_data(row["step"], row["completion"], *[row.get(k) for k in reward_names])
            pair = [im for im in (images[i] if i < len(images) and images[i] else []) if im is not None]
            if pair:
                scores = ", ".join(f"{k}={row[k]:.3f}" for k in reward_names if isinstance(row.get(k), float))
                pictures.append(wandb.Image(side_by_side(pair), caption=f"{row['completion']} [{scores}]"))
        payload: dict[str, Any] = {"samples/table": table}
        if pictures:
            payload["samples/pairs"] = pictures
        wandb.log(payload, commit=False)


def side_by_side(images: list) -> Any:
    """[previous state, zoomed image] as one picture, left to right."""
    from PIL import Image

    height = max(im.height for im in images)
    canvas = Image.new("RGB", (sum(im.width for im in images), height), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return canvas
