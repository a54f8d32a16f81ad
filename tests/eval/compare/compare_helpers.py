"""Runs and groups made of hand-written scores, for the comparison's logic (no evaluation behind them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coz_train.eval.compare.groups import Group
from coz_train.eval.compare.runs import EvalRun


def scored_run(name: str, values: dict[str, np.ndarray], metric: str = "musiq", scale: int = 64,
               root: Path = Path("/runs")) -> EvalRun:
    """A run whose method m scored values[m][i] on image i (one metric, one scale)."""
    n = len(next(iter(values.values())))
    images = tuple(f"{i:04d}" for i in range(n))
    scores = {(method, scale, metric): dict(zip(images, map(float, v), strict=True)) for method, v in values.items()}
    return EvalRun(root / name, {"eval": {}, "policy": {}, "seed": 0}, scores, images, name)


def group(name: str, *runs: EvalRun) -> Group:
    return Group(name, runs, tuple(f"seed {k}" for k in range(1, len(runs) + 1)))
