"""`python -m coz_train.eval.compare <run> <run> [...] [--baseline <method | group | run>]`: which differences hold.

    python -m coz_train.eval.compare outputs/eval/adapter --baseline recursive_multiscale-vlm
    python -m coz_train.eval.compare outputs/eval/seed1 outputs/eval/seed2 outputs/eval/seed3 outputs/eval/released \
        --baseline outputs/eval/released
    python -m coz_train.eval.compare --group mine=outputs/eval/s1,outputs/eval/s2 outputs/eval/released \
        --baseline outputs/eval/released --metrics musiq niqe --scales 64 256

docs/compare.md says what is compared and what a verdict means.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from coz_train.cli import add_debug_switch, run_argparse
from coz_train.eval.compare.run import Options, compare


def _group(text: str) -> tuple[str, list[str]]:
    name, sep, runs = text.partition("=")
    if not sep or not name.strip() or not runs.strip():
        raise argparse.ArgumentTypeError(f"'{text}': give <name>=<run>,<run>,...")
    return name.strip(), [r for r in runs.split(",") if r]


def _scale(text: str) -> int:
    try:
        return int(text.lower().removesuffix("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a zoom scale (4, 16, 64x, ...)") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coz_train.eval.compare",
                                description="Paired per-image comparison of eval runs of one protocol: bootstrap "
                                            "intervals, Wilcoxon signed-rank + Holm, verdicts across seeds.")
    p.add_argument("runs", nargs="*", help="eval run folders (made by python -m coz_train.eval)")
    p.add_argument("--group", type=_group, action="append", default=[], metavar="NAME=RUN,RUN,...",
                   help="runs that are seed replicates of one condition (found on their own when they differ only in "
                        "the adapter's training seed or the eval seed)")
    p.add_argument("--baseline", help="a method (e.g. recursive_multiscale-vlm: every other method of a group against "
                                      "it), or a group or run folder (every other group against it, method by method)")
    p.add_argument("--methods", nargs="+", help="only these methods (result names, e.g. recursive_multiscale-vlm+adapter)")
    p.add_argument("--metrics", nargs="+", help="only these metrics (default: every metric of the runs)")
    p.add_argument("--scales", nargs="+", type=_scale, help="only these zoom scales (e.g. 64 256)")
    p.add_argument("--out", type=Path, help="output folder (default: outputs/compare/<date>_<time>)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default 0.05)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates per interval (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--min-images", type=int, default=10, help="refuse fewer common images than this (default 10)")
    p.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                   help="a config key (or section) whose difference between the runs does not change results, e.g. "
                        "eval.image_dir for the same images in a moved folder")
    p.add_argument("--no-seed-groups", action="store_true",
                   help="compare every run on its own (except --group), even those that differ only in a seed")
    add_debug_switch(p)
    return p


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = parser().parse_args(argv)
    groups: dict[str, list[str]] = {}
    for name, runs in args.group:
        if name in groups:
            raise ValueError(f"--group {name} is given twice: one --group per name.")
        groups[name] = runs
    out = compare(Options(runs=args.runs, groups=groups, baseline=args.baseline, methods=args.methods,
                          metrics=args.metrics, scales=args.scales, out=args.out, alpha=args.alpha, n_boot=args.n_boot,
                          seed=args.seed, min_images=args.min_images, ignore_keys=tuple(args.ignore_key),
                          seed_groups=not args.no_seed_groups))
    print(out / "compare.md")  # the path, for scripts
    return out


if __name__ == "__main__":
    run_argparse(main)
