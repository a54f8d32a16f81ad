"""`python -m coz_train.bench [bench.size=tiny|mid|real] [bench.phases=[...]] [bench.compiled_decode=true]`.

Whole GRPO steps of the trainer a run builds, `perf=plain` against `perf=fast`, in one process, split into
phases at TRL's own boundaries; and phase-level equality checks of every switch against the plain path,
with their negative controls. Prints the tables and writes `<run folder>/bench.json` (docs/performance.md).
The run config of the timed steps is `conf/experiment/bench_<bench.size>.yaml` (added here unless another
+experiment is given); any run setting can be overridden on the command line as for training.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from coz_train.cli import fail, hydra_errors, run_hydra
from coz_train.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    with hydra_errors():
        from coz_train.bench.run import failures, run_bench

        failed = failures(run_bench(cfg))
    if failed:
        fail(f"bench: {', '.join(failed)} failed: the table above and {Path(cfg.output_dir) / cfg.bench.out} say why.")


def with_defaults(argv: list[str]) -> list[str]:
    """The command line with the bench's defaults: its job name, and the run config of bench.size."""
    given = {arg.split("=")[0].lstrip("+") for arg in argv}
    size = next((arg.split("=", 1)[1] for arg in reversed(argv) if arg.startswith("bench.size=")), "tiny")
    defaults = [d for d in ("hydra.job.name=bench", "experiment_name=bench") if d.split("=")[0] not in given]
    if "experiment" not in given and (Path(config_dir()) / "experiment" / f"bench_{size}.yaml").is_file():
        defaults.append(f"+experiment=bench_{size}")  # an unknown size is refused by run_bench, with the known
    return [*defaults, *argv]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.argv[1:] = with_defaults(sys.argv[1:])
    run_hydra(main)
