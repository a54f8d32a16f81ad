"""Reward curves of a training run, as the paper plots them.

    python -m coz_train.eval.report outputs/grpo_qwen/<time>

Reads the run's `log_history.jsonl` (or, for a run without it, the newest checkpoint's
`trainer_state.json`) and draws the total reward and each component (critic, phrase exclusion,
repetition, and any other registered reward) against the optimizer step, mean +- std where
logged, into `<run>/reward_curves.png`. In the paper the phrase-exclusion reward reaches 1.0 and
the repetition penalty 0.0 early, while the critic reward rises throughout.
`python -m coz_train.eval.checkpoints` draws the same panels above its metric-against-step curves.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from coz_train.callbacks import LOG_HISTORY  # noqa: E402


def load_history(run_dir: Path) -> list[dict]:
    path = run_dir / LOG_HISTORY
    if path.is_file():
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not checkpoints:
            raise FileNotFoundError(f"{run_dir} has neither {LOG_HISTORY} nor a checkpoint-N/trainer_state.json.")
        entries = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    by_step: dict[int, dict] = {}
    for entry in entries:  # a resumed run logs some steps again: the last entry of a step wins
        if "reward" in entry:
            by_step[int(entry["step"])] = entry
    if not by_step:
        raise ValueError(f"No reward was logged in {run_dir}: was it a coz_train GRPO run with logging_steps >= 1?")
    return [by_step[s] for s in sorted(by_step)]


def reward_panels(history: list[dict]) -> list[tuple[str, str, str]]:
    """(mean key, std key, title) of the total reward and of every logged component."""
    components = sorted({m.group(1) for e in history for k in e if (m := re.fullmatch(r"rewards/(.+)/mean", k))})
    return [("reward", "reward_std", "total reward")] + [
        (f"rewards/{c}/mean", f"rewards/{c}/std", c.replace("_", " ")) for c in components
    ]


def draw_rewards(axes: list, history: list[dict]) -> None:
    """One reward panel per axis (as many axes as `reward_panels(history)`): mean +- std against the step."""
    for ax, (key, std_key, title) in zip(axes, reward_panels(history), strict=True):
        points = [(e["step"], e[key], e.get(std_key)) for e in history if key in e]
        steps = [p[0] for p in points]
        means = [p[1] for p in points]
        ax.plot(steps, means, lw=1.2)
        stds = [p[2] for p in points]
        if all(s is not None for s in stds):
            ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")


def reward_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    history = load_history(run_dir)
    panels = len(reward_panels(history))
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.0), squeeze=False)
    draw_rewards(list(axes[0]), history)
    fig.tight_layout()
    path = Path(out) if out else run_dir / "reward_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Reward curves (total and per component) of a coz_train run.")
    parser.add_argument("run_dir", help="the training run folder (holds log_history.jsonl)")
    parser.add_argument("--out", help="PNG path (default: <run_dir>/reward_curves.png)")
    args = parser.parse_args()
    print(reward_curves(args.run_dir, args.out))  # the path, for scripts


if __name__ == "__main__":
    main()
