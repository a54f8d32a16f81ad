"""How fast the training command answers when it has nothing to train: `--help`, a misspelt key, missing models.

    python scripts/startup_bench.py [--runs 7] [--limit 2.5] [--out startup.json]

Each command runs `--runs` times, round-robin with `python -c "import torch"` (the reference: any command that
trains must at least import torch), so a busy machine slows all of them alike; the medians and each command's
ratio to the reference are printed, and the script exits 1 when a ratio exceeds `--limit`. The commands run
offline (HF_HUB_OFFLINE=1, an empty hub cache) from a scratch folder, with one thread (OMP_NUM_THREADS=1):
- help: `python -m coz_train --help`
- misspelt key: `python -m coz_train grpo.max_stepz=3`
- missing models: `python -m coz_train +experiment=grpo_qwen data.image_dir=<empty folder>` (neither the
  policy nor the critic is in the cache: both are named in one error)
Every command but the reference must fail with one `Error:` line (help: print the usage and succeed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(scratch: Path) -> dict[str, list[str]]:
    python = sys.executable
    run_dir = f"hydra.run.dir={scratch / 'run'}"
    return {
        "import torch (reference)": [python, "-c", "import torch"],
        "--help": [python, "-m", "coz_train", "--help"],
        "misspelt key": [python, "-m", "coz_train", "grpo.max_stepz=3", run_dir],
        "missing models": [python, "-m", "coz_train", "+experiment=grpo_qwen", f"data.image_dir={scratch / 'images'}",
                           "logging.wandb=false", run_dir],
    }


def expected(name: str, done: subprocess.CompletedProcess) -> str | None:
    """What is wrong with a command's answer, or None."""
    if name.startswith("import torch") or name == "--help":
        return None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-500:]}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 1 or not lines or not lines[-1].startswith("Error: ") or "Traceback" in done.stderr:
        return f"expected one Error: line and exit 1, got exit {done.returncode}: {done.stderr[-500:]}"
    if name == "missing models" and not ("policy.name_or_path" in lines[-1] and "critic.name_or_path" in lines[-1]):
        return f"expected both models named in one error: {lines[-1]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--limit", type=float, default=2.5, help="largest allowed ratio to `import torch`")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "images").mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(scratch / "hf"), "OMP_NUM_THREADS": "1",
               "WANDB_MODE": "disabled"}
        cmds = commands(scratch)
        seconds: dict[str, list[float]] = {name: [] for name in cmds}
        problems: dict[str, str] = {}
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                start = time.perf_counter()
                done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
                seconds[name].append(time.perf_counter() - start)
                wrong = expected(name, done)
                if wrong:
                    problems[name] = wrong
    reference = statistics.median(seconds["import torch (reference)"])
    rows = {name: {"median_s": statistics.median(values), "runs_s": values,
                   "ratio": statistics.median(values) / reference} for name, values in seconds.items()}
    print(f"{'command':<26} {'median s':>9} {'x torch':>8}   ({args.runs} runs each, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]})")
    for name, row in rows.items():
        print(f"{name:<26} {row['median_s']:>9.2f} {row['ratio']:>8.2f}")
    slow = [name for name, row in rows.items() if row["ratio"] > args.limit]
    for name in slow:
        print(f"too slow: {name} takes {rows[name]['ratio']:.2f}x `import torch` (limit {args.limit}x)")
    for name, wrong in problems.items():
        print(f"wrong answer: {name}: {wrong}")
    if args.out:
        args.out.write_text(json.dumps({"limit": args.limit, "rows": rows, "problems": problems}, indent=1))
    return 1 if slow or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
