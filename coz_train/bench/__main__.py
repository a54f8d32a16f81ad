"""`python -m coz_train.bench [bench.size=tiny|real] [bench.phases=[...]]`: time one GRPO step's phases.

Plain path (as TRL + PEFT run it) against the `perf` switches, in one process, with equality
checks; prints a table and writes `<run folder>/bench.json` (docs/performance.md).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from coz_train.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    from coz_train.bench.run import run_bench

    result = run_bench(cfg)
    failed = [name for name, phase in result["phases"].items()
              if "error" in phase or not (phase.get("check") or {}).get("passed", True)]
    if failed:
        print(f"bench: failed phases or checks: {failed}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for default in ("hydra.job.name=bench", "experiment_name=bench"):
        if not any(arg.startswith(default.split("=")[0] + "=") for arg in sys.argv[1:]):
            sys.argv.insert(1, default)
    main()
