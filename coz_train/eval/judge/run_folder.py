"""Judging an evaluation's run folder after the fact: its saved chains, no chain made again.

    python -m coz_train.eval.judge outputs/smoke_eval/<time> eval/judge=tiny
    python -m coz_train.eval.judge <run> eval/judge=internvl3_5_38b eval.judge.url=http://gpu-node:8001

The record (`coz_train.eval.record`) keeps every state of every chain as PNG (`per-sample/<image>/<method>/<k>.png`)
and every score of an image in its `scores.json`, and the tables are made from the scores alone, so a judge can be
run on a finished folder: each image's `hallucination` scores are replaced by the new judge's (one atomic rename
of its `scores.json`, the other metrics untouched), the judge section is stored in `eval_record.json` (a later
resume or extension of the run must then give the same `eval.judge`), and the tables are made again
(`coz_train.eval.merge`). PNG is lossless, so a pair read back has the cache key it had in memory: a folder whose
evaluation ran with this judge is re-judged from the cache without a model call.

The judge section: the one the folder was evaluated with (the schema's defaults if none), replaced by a preset
`eval/judge=<name>` (conf/eval/judge/<name>.yaml) when given, then the `eval.judge.<key>=<value>` overrides.
Re-judge a folder whose evaluation has finished (every shard; merge refuses an incomplete one alike) and is not
running: an evaluation still running keeps the config it started with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from coz_train.config import config_dir
from coz_train.eval.images import eval_image_list
from coz_train.eval.judge.hallucination import HallucinationJudge, load_judge
from coz_train.eval.judge.pairs import METRIC
from coz_train.eval.merge import IncompleteRunError, merge, missing_images
from coz_train.eval.methods import method_labels, zoom_scales
from coz_train.eval.record import RECORD, SCORES, per_sample, read_sample, recorded_config, sample_dir
from coz_train.eval_sections import JudgeConfig
from coz_train.sr.chain import Chain

log = logging.getLogger(__name__)

PRESET = "eval/judge="
KEY = "eval.judge."


def presets() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "eval" / "judge").glob("*.yaml"))


def judge_section(recorded: Any, overrides: list[str]) -> DictConfig:
    """The judge section of a re-judging (see the module docstring), checked against the `JudgeConfig` schema."""
    wrong = [o for o in overrides if not (o.startswith((PRESET, KEY)) and "=" in o)]
    if wrong:
        raise ValueError(
            f"{wrong}: give eval/judge=<preset> (one of {presets()}) and eval.judge.<key>=<value> "
            "overrides only (the chains and the other metrics stay as the folder has them)."
        )
    chosen = [o.removeprefix(PRESET) for o in overrides if o.startswith(PRESET)]
    if len(chosen) > 1:
        raise ValueError(f"Several judge presets given ({chosen}): give one eval/judge=<preset>.")
    layers = [OmegaConf.structured(JudgeConfig)]
    if chosen:
        path = Path(config_dir()) / "eval" / "judge" / f"{chosen[0]}.yaml"
        if not path.is_file():
            raise ValueError(f"eval/judge={chosen[0]}: no such preset; the presets are {presets()} (conf/eval/judge/).")
        layers.append(OmegaConf.load(path))
    elif recorded is not None:
        layers.append(recorded)
    layers.append(OmegaConf.from_dotlist([o.removeprefix(KEY) for o in overrides if o.startswith(KEY)]))
    try:
        return OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise ValueError(
            f"eval.judge: {str(err).splitlines()[0]} (the keys: {[f.name for f in dataclasses.fields(JudgeConfig)]})."
        ) from None


def read_chain(folder: Path, label: str, steps: int) -> Chain:
    """The states 0..steps of one result as the record saved them (up to the last one saved: `full` may have fewer
    steps than eval.steps)."""
    paths = [folder / label / f"{k}.png" for k in range(steps + 1)]
    saved = next((k for k, path in enumerate(paths) if not path.is_file()), len(paths))
    if saved < 2:
        raise FileNotFoundError(
            f"{paths[saved]} is missing: the folder does not hold the {label} chain its "
            "eval_record.json names; evaluate it again."
        )
    paths = paths[:saved]
    states = []
    for path in paths:
        with Image.open(path) as image:
            states.append(image.convert("RGB"))
    return Chain(label, states)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def store_judge(run_dir: Path, section: DictConfig) -> None:
    """`eval.judge` of the folder's `eval_record.json` replaced by `section`, the rest of the record as it was."""
    path = run_dir / RECORD
    record = json.loads(path.read_text())
    record["config"]["eval"]["judge"] = OmegaConf.to_container(section, resolve=True)
    _write_json(path, record)


def judge_run(run_dir: Path, section: DictConfig, backend: Any = None) -> HallucinationJudge:
    """Judge every image of the finished run in `run_dir` with `section`, then make its tables again."""
    run_dir = Path(run_dir)
    cfg = recorded_config(run_dir)
    cfg.output_dir = str(run_dir)  # the folder may have moved since
    ev = cfg.eval
    images = eval_image_list(ev)
    missing = missing_images(run_dir, images)
    if missing:
        raise IncompleteRunError(
            f"{len(missing)} of {len(images)} images have no result in {per_sample(run_dir)} yet "
            f"(e.g. {missing[0]}): re-judge once every shard of the evaluation has finished."
        )
    judge = load_judge(section, run_dir, backend)
    if judge is None:
        raise ValueError(
            "eval.judge.name_or_path is null: name a judge, e.g. eval/judge=internvl3_5_38b (see docs/judge.md)."
        )
    labels, scales = method_labels(ev), zoom_scales(ev)
    judged: dict[str, dict] = {}  # every image judged first: a failing judge leaves the folder as it was
    for image in images:
        sample = read_sample(run_dir, image.name)
        if "skipped" not in sample:
            chains = [read_chain(sample_dir(run_dir, image.name), label, ev.steps) for label in labels]
            scores = [s for s in sample["scores"] if s[2] != METRIC]
            judged[image.name] = {**sample, "scores": scores + [list(s) for s in judge.score_chains(chains, scales)]}
    for name, sample in judged.items():
        _write_json(sample_dir(run_dir, name) / SCORES, sample)
    store_judge(run_dir, section)
    log.info("Re-judged %s: %s", run_dir, judge.summary())
    cfg.eval.judge = section
    merge(cfg)
    return judge
