"""One comparison, start to end: load the runs, check their protocol, group the seeds, compare, write.

    from coz_train.eval.compare.run import Options, compare
    out = compare(Options(runs=["outputs/a", "outputs/b"], baseline="outputs/b"))
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from coz_train.eval.compare.groups import group_runs
from coz_train.eval.compare.pairs import plan_pairs
from coz_train.eval.compare.report import write_report
from coz_train.eval.compare.runs import EvalRun, check_protocol, common_images, load_run, named
from coz_train.eval.compare.verdicts import VERDICTS, compare_all, has_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    runs: list[str]                                   # run folders (those of explicit groups may be left out)
    groups: dict[str, list[str]] = field(default_factory=dict)   # --group name=run,run
    baseline: str | None = None                       # a method, a group or a run folder
    methods: list[str] | None = None
    metrics: list[str] | None = None
    scales: list[int] | None = None
    out: Path | None = None                           # default: outputs/compare/<time>
    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0
    min_images: int = 10
    ignore_keys: tuple[str, ...] = ()
    seed_groups: bool = True


def check_options(o: Options) -> None:
    if not o.runs and not o.groups:
        raise ValueError("No runs to compare: give eval run folders (python -m coz_train.eval.compare <run> <run>).")
    if not 0 < o.alpha < 1:
        raise ValueError(f"--alpha {o.alpha}: give a level between 0 and 1 (0.05).")
    if o.n_boot < 100:
        raise ValueError(f"--n-boot {o.n_boot}: give at least 100 bootstrap replicates (2000 by default).")
    if o.min_images < 2:
        raise ValueError(f"--min-images {o.min_images}: a paired test needs at least 2 images.")
    for name, members in o.groups.items():
        if not name or not members:
            raise ValueError(f"--group {name}={','.join(members)}: give --group <name>=<run>,<run>,...")


def _load(o: Options) -> tuple[list[EvalRun], dict[str, list[EvalRun]]]:
    """Every run once (positional runs first, then those of the groups), and the explicit groups' runs."""
    paths: dict[Path, str] = {}
    for given in [*o.runs, *(p for members in o.groups.values() for p in members)]:
        paths.setdefault(Path(given).expanduser().resolve(), given)
    repeated = [given for given, n in Counter(Path(p).expanduser().resolve() for p in o.runs).items() if n > 1]
    if repeated:
        raise ValueError(f"{repeated[0]} is given twice: a run compared with itself shows nothing.")
    runs = named([load_run(given) for given in paths.values()])
    by_path = {run.path.resolve(): run for run in runs}
    explicit: dict[str, list[EvalRun]] = {}
    seen: dict[Path, str] = {}
    for name, members in o.groups.items():
        explicit[name] = []
        for given in members:
            path = Path(given).expanduser().resolve()
            if path in seen:
                raise ValueError(f"--group {name}: {given} is in --group {seen[path]} already.")
            seen[path] = name
            explicit[name].append(by_path[path])
    return runs, explicit


def _chosen(available: list, wanted: list | None, option: str) -> list:
    if wanted is None:
        return available
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ValueError(f"{option}: {unknown} not in the runs' scores (they have {available}).")
    return [a for a in available if a in wanted]


def compare(o: Options) -> Path:
    """Compare the runs of `o` and write compare.md, compare.csv and compare.png; returns the output folder."""
    check_options(o)
    runs, explicit = _load(o)
    check_protocol(runs, o.ignore_keys)
    images = common_images(runs, o.min_images)
    groups = group_runs(runs, explicit, o.seed_groups)
    for group in groups:
        log.info("Group %s: %s", group.name, ", ".join(f"{r.name} ({s})" for r, s in zip(group.runs, group.seeds,
                                                                                        strict=True)))
    keys = [key for run in runs for key in run.scores]
    metrics = _chosen(list(dict.fromkeys(m for _, _, m in keys)), o.metrics, "--metrics")
    scales = _chosen(sorted({s for _, s, _ in keys}), o.scales, "--scales")
    pairs = [p for p in plan_pairs(groups, o.baseline, o.methods, metrics, scales) if has_scores(p)]
    if not pairs:
        raise ValueError("None of the chosen methods has scores of the chosen metrics and scales in every run.")
    comparisons = compare_all(pairs, images, o.n_boot, o.seed, o.alpha)
    out = o.out or Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    paths = write_report(Path(out), comparisons, groups, runs, images, o.alpha, o.n_boot, o.seed, o.ignore_keys)
    counts = Counter(c.verdict for c in comparisons)
    log.info("%d comparisons on %d images: %s. %s", len(comparisons), len(images),
             ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v]), paths["compare.md"].resolve())
    return Path(out)
