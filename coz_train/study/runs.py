"""Evaluation run folders as a study reads them: which conditions, images and scales they hold.

An eval run (`python -m coz_train.eval`, `coz_train.eval.run`) writes `per-sample/<image>/<label>/<k>.png`
(k = 0 the input, k = 1..steps the zoom by scale**k) with that chain's `prompts.json` (`{"k": prompt}`),
and its resolved config in `.hydra/config.yaml` (`eval.scale`, `eval.steps`). Which region of the input each
state shows comes from the image's `windows.json` (`coz_train.eval.record`: each result's windows W_1..W_N in
the input's px, moved by eval.zoom_centre / eval.zoom_centres); a run folder without it (older than that file)
zoomed into the centre, as the official code does. A study condition is a
method label (`recursive_multiscale-vlm`, `nearest`, ...) or, with `study.prefix_conditions`,
`<run folder name>/<label>` so that the same label from two runs (a base and an adapter evaluation) stays
apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in the input's (state 0's) px
WINDOWS = "windows.json"  # coz_train.eval.record.WINDOWS (not imported: the record module loads torch)


@dataclass(frozen=True)
class ChainFiles:
    """One condition's zoom chain on one image, as files of an eval run."""

    run: Path
    folder: Path  # per-sample/<image>/<label>
    image: str
    label: str  # the method label in the run
    prompts: dict[int, str]  # step k -> the prompt that made state k ("" for none)
    windows: tuple[Box, ...]  # windows[k-1]: the region of the input (state 0) that state k shows

    def state(self, k: int) -> Path:
        return self.folder / f"{k}.png"

    def window(self, k: int) -> Box:
        """The region of the input that state k (k >= 1) shows."""
        if not 1 <= k <= len(self.windows):
            raise ValueError(f"{self.folder}: no zoom window for state {k} (the run records {len(self.windows)}).")
        return self.windows[k - 1]

    @property
    def method(self) -> str:
        return self.label.partition("-")[0]


@dataclass
class RunSet:
    """The chains of one or more eval runs, keyed by (condition, image)."""

    scale: int  # zoom per step (eval.scale)
    steps: int
    chains: dict[tuple[str, str], ChainFiles] = field(default_factory=dict)
    conditions: list[str] = field(default_factory=list)  # in the order first met

    @property
    def scales(self) -> list[int]:
        return [self.scale**k for k in range(1, self.steps + 1)]

    def images(self, condition: str) -> list[str]:
        return sorted(image for cond, image in self.chains if cond == condition)


def run_geometry(run: Path) -> tuple[int, int]:
    """(eval.scale, eval.steps) from the run's resolved config."""
    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run} has no .hydra/config.yaml: give the folder `python -m coz_train.eval` wrote "
                                "(it prints 'Results: <run>/results.md').")
    cfg = OmegaConf.load(config)
    try:
        return int(cfg.eval.scale), int(cfg.eval.steps)
    except Exception as err:  # an old or foreign config
        raise ValueError(f"{config}: no eval.scale / eval.steps ({err}); is this an evaluation run?") from err


def centre_windows(size: int, scale: int, steps: int) -> list[Box]:
    """The official centre crops of a size x size input, zoom by zoom (`coz_train.sr.chain.zoom_windows` without a
    centre, which is not imported: it loads the SR backbones)."""
    sides = [size // scale**k for k in range(1, steps + 1)]
    return [((size - side) // 2, (size - side) // 2, (size - side) // 2 + side, (size - side) // 2 + side)
            for side in sides]


def read_windows(image_dir: Path, scale: int, steps: int) -> dict[str, tuple[Box, ...]] | None:
    """Each result's windows as the eval run recorded them in `<image>/windows.json`; None without that file (a run
    older than it: the centre)."""
    path = image_dir / WINDOWS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        size = int(data["start_size"])
        windows = {label: tuple(_box(w) for w in boxes) for label, boxes in data["windows"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not the windows file an eval run writes ({{\"start_size\": P, \"windows\": "
                         f"{{\"<method>\": [[left, top, right, bottom], ...]}}}}): {err}") from err
    for label, boxes in windows.items():
        for k, (left, top, right, bottom) in enumerate(boxes, start=1):
            side = size // scale**k
            if right - left != side or bottom - top != side or left < 0 or top < 0 or right > size or bottom > size:
                raise ValueError(f"{path}: {label}'s window {k} {(left, top, right, bottom)} is not a {side} px square "
                                 f"inside the {size} px input (eval.scale={scale}): the file does not belong to this "
                                 "run; evaluate the image again.")
        if len(boxes) > steps:
            raise ValueError(f"{path}: {label} has {len(boxes)} windows for eval.steps={steps}.")
    return windows


def _box(values: list) -> Box:
    if len(values) != 4 or any(int(v) != v for v in values):
        raise ValueError(f"{values} is not [left, top, right, bottom] in whole pixels")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def read_prompts(folder: Path, steps: int) -> dict[int, str]:
    path = folder / "prompts.json"
    if not path.is_file():
        return {k: "" for k in range(1, steps + 1)}
    try:
        raw = json.loads(path.read_text())
        return {int(k): str(v or "") for k, v in raw.items()}
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not the {{step: prompt}} JSON an eval run writes: {err}") from err


def read_runs(runs: list[str | Path], prefix_conditions: bool = False) -> RunSet:
    """Every chain of the given eval runs; one geometry for all (a study compares like with like)."""
    if not runs:
        raise ValueError("No eval run given: "
                         "python -m coz_train.study build <eval run> [<eval run> ...] study.name=...")
    result: RunSet | None = None
    for given in runs:
        run = Path(given).expanduser().resolve()
        per_sample = run / "per-sample"
        if not per_sample.is_dir():
            raise FileNotFoundError(f"{given}: no per-sample/ folder; give an evaluation run folder "
                                    "(outputs/<experiment>/<time>/ of python -m coz_train.eval).")
        scale, steps = run_geometry(run)
        if result is None:
            result = RunSet(scale, steps)
        elif (scale, steps) != (result.scale, result.steps):
            raise ValueError(f"{given} zooms {steps} x {scale}x but the first run {runs[0]} zooms "
                             f"{result.steps} x {result.scale}x: build a study from runs of one geometry.")
        for image_dir in sorted(p for p in per_sample.iterdir() if p.is_dir()):
            recorded = read_windows(image_dir, scale, steps)
            for folder in sorted(p for p in image_dir.iterdir() if p.is_dir()):
                if not (folder / "0.png").is_file():
                    continue
                if recorded is not None and folder.name in recorded:
                    windows = recorded[folder.name]
                else:  # an older run, or a result recording no windows: the centre, as every chain zoomed then
                    with Image.open(folder / "0.png") as start:
                        windows = tuple(centre_windows(start.width, scale, steps))
                condition = f"{run.name}/{folder.name}" if prefix_conditions else folder.name
                key = (condition, image_dir.name)
                if key in result.chains:
                    raise ValueError(
                        f"Condition {condition!r} of image {image_dir.name!r} is in {result.chains[key].run} and in "
                        f"{run}: set study.prefix_conditions=true (conditions become <run folder>/<label>).")
                result.chains[key] = ChainFiles(run, folder, image_dir.name, folder.name, read_prompts(folder, steps),
                                                windows)
                if condition not in result.conditions:
                    result.conditions.append(condition)
    assert result is not None
    if not result.chains:
        raise FileNotFoundError(f"No per-sample/<image>/<method>/0.png in {', '.join(map(str, runs))}: "
                                "the evaluation runs hold no images.")
    return result
