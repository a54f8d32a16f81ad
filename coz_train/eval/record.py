"""The per-sample record of an eval run: what is finished, written so that a kill never leaves a half sample.

    <run>/per-sample/<image>/<method>/<k>.png, prompts.json   the chains (k = 0 is the input)
    <run>/per-sample/<image>/full-*/whole-<k>.png, tiles.json the full-image chain's whole states and tiles
    <run>/per-sample/<image>/chains.png                       the figure (eval.figures)
    <run>/per-sample/<image>/windows.json                     each chain's zoom windows in the start's px
    <run>/per-sample/<image>/scores.json                      every (method, scale, metric, value) of the image
    <run>/per-sample/<image>.skipped.json                     an image that could not be used, and why
    <run>/eval_record.json                                    the config the record was made with

An image's folder is written as `per-sample/.<image>.tmp<pid>/` and renamed into place once
complete (a rename is atomic), so an image is finished exactly when `per-sample/<image>/scores.json`
(or its `.skipped.json`) exists; anything else (a folder left by an older run, a temp folder of a
killed one) is made again. The tables are computed from the scores alone (`merge.py`).
`windows.json` is `{"start_size": P, "windows": {"<method>": [[left, top, right, bottom], ...]}}`: the
region of the start (state 0, P x P) that each state k = 1..N of that result shows (`Chain.windows`; the
centre unless eval.zoom_centre / eval.zoom_centres moved it), so that what reads the states later (the
human study) shows the same region; run folders older than it zoomed into the centre.

A run folder holds the results of one eval config: `eval_record.json` keeps the config, and a
later run (a restart, another shard) whose config differs in a key that changes the results stops
with the keys named, instead of mixing two configs in one table. Keys that only say how the run
is done (RUN_ONLY_KEYS) may differ; `eval.max_images` may grow, so a run can be extended. A file the
results depend on (INPUT_FILES: the `eval.zoom_centres` file) is compared by its sha256, so editing it
between two runs into one folder is refused as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coz_train.sr.chain import Chain
from coz_train.sr.full_image import FullImageChain

RECORD = "eval_record.json"
SCORES = "scores.json"
WINDOWS = "windows.json"
RECORD_FORMAT = 1
RUN_ONLY_KEYS = ("shard", "num_shards", "max_images", "figures", "device", "batch_size")
# eval.judge keys that say where and how the judge runs, not what it answers (its cache key leaves them out too)
JUDGE_RUN_ONLY_KEYS = ("batch_size", "url", "device", "concurrency", "timeout_s", "retries", "token_env", "cache_dir")
# keys newer than some run folders: absent from an older record, they match the value that gives its results
ADDED_KEYS = {"eval.consistency_metrics": [], "eval.zoom_centre": None, "eval.zoom_centres": None}
ADDED_SECTIONS = {"eval.judge.": ("eval.judge.name_or_path", None), "eval.full_image.": ("eval.methods", "no full")}
INPUT_FILES = ("zoom_centres",)  # eval keys naming a file whose content changes the results

Score = tuple[str, int, str, float]  # method, scale, metric, value


class RecordMismatchError(ValueError):
    pass


def per_sample(out: Path) -> Path:
    return out / "per-sample"


def sample_dir(out: Path, name: str) -> Path:
    return per_sample(out) / name


def skip_file(out: Path, name: str) -> Path:
    return per_sample(out) / f"{name}.skipped.json"


def is_finished(out: Path, name: str) -> bool:
    return (sample_dir(out, name) / SCORES).is_file() or skip_file(out, name).is_file()


def _clear_leftovers(out: Path, name: str) -> None:
    """Temp folders of killed runs, and a folder without scores (an older run's, or one never finished)."""
    for tmp in per_sample(out).glob(f".{name}.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if sample_dir(out, name).exists():
        shutil.rmtree(sample_dir(out, name))


def save_chains(folder: Path, chains: list[Chain]) -> None:
    for chain in chains:
        sub = folder / chain.method
        sub.mkdir(parents=True, exist_ok=True)
        for k, state in enumerate(chain.states):
            state.save(sub / f"{k}.png")
        (sub / "prompts.json").write_text(json.dumps({str(k + 1): p for k, p in enumerate(chain.prompts)}, indent=1))
        if isinstance(chain, FullImageChain):  # its whole states, and every tile's window and prompt
            chain.save(sub)


def _on_grid(value: float) -> int | float:
    """A window edge as an int where it lies on the start's pixel grid (every window coz_train.sr.chain makes)."""
    return round(value) if abs(value - round(value)) < 1e-6 else value


def chain_windows(chains: list[Chain]) -> dict[str, list[list[int | float]]]:
    """Each chain's windows W_1..W_N in the start's px (`Chain.windows`), by result name; chains recording none
    (states that are not crops of the start's regions) are left out."""
    return {chain.method: [[_on_grid(v) for v in w] for w in chain.windows()] for chain in chains if chain.boxes}


def write_sample(out: Path, name: str, chains: list[Chain], scores: list[Score], unavailable: dict[str, str],
                 figure: Any = None) -> None:
    """One image's chains, zoom windows, figure (`figure(chains, path)`, optional) and scores, published in one
    rename."""
    _clear_leftovers(out, name)
    tmp = per_sample(out) / f".{name}.tmp{os.getpid()}"
    tmp.mkdir(parents=True)
    save_chains(tmp, chains)
    windows = chain_windows(chains)
    if windows:
        (tmp / WINDOWS).write_text(json.dumps({"start_size": chains[0].states[0].width, "windows": windows}))
    if figure is not None:
        figure(chains, tmp / "chains.png")
    # json writes NaN (an undefined score) and inf (PSNR of identical images) as NaN / Infinity and reads them back
    (tmp / SCORES).write_text(json.dumps({"scores": [list(s) for s in scores], "unavailable": unavailable}))
    os.replace(tmp, sample_dir(out, name))


def write_skip(out: Path, name: str, reason: str, detail: str) -> None:
    _clear_leftovers(out, name)
    per_sample(out).mkdir(parents=True, exist_ok=True)
    _write_json_atomic(skip_file(out, name), {"reason": reason, "detail": detail})


def read_sample(out: Path, name: str) -> dict[str, Any]:
    """{"scores": [[method, scale, metric, value], ...], "unavailable": {...}} or {"skipped": {reason, detail}}."""
    if skip_file(out, name).is_file():
        return {"skipped": json.loads(skip_file(out, name).read_text())}
    return json.loads((sample_dir(out, name) / SCORES).read_text())


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _results_config(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that change the results: the eval section (less RUN_ONLY_KEYS and JUDGE_RUN_ONLY_KEYS), the
    policy and the seed."""
    ev = {k: v for k, v in config["eval"].items() if k not in RUN_ONLY_KEYS}
    if isinstance(ev.get("judge"), dict):
        ev["judge"] = {k: v for k, v in ev["judge"].items() if k not in JUDGE_RUN_ONLY_KEYS}
    return {"eval": ev, "policy": config.get("policy"), "seed": config.get("seed")}


def _added_and_unused(key: str, new: dict[str, Any]) -> bool:
    """Whether `key`, absent from an older record, takes here the value the older code behaved as (ADDED_KEYS),
    or belongs to a section this config leaves unused (no judge model; no `full` method)."""
    if key in ADDED_KEYS:
        return new.get(key) == ADDED_KEYS[key]
    for prefix, (switch, off) in ADDED_SECTIONS.items():
        if key.startswith(prefix):
            return new.get(switch) is None if off is None else "full" not in (new.get(switch) or [])
    return False


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def result_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a run's config (as `eval_record.json` holds it) that change its results, flattened
    (`eval.process_size`, `policy.name_or_path`, `seed`, ...): two runs with the same give the same numbers."""
    return _flat(_results_config(config))


def _input_files(config: dict[str, Any]) -> dict[str, str]:
    """`eval.<key> (sha256)` -> the sha256 of each INPUT_FILES file the config names ("missing" if it is not there)."""
    digests = {}
    for key in INPUT_FILES:
        if config["eval"].get(key):
            path = Path(config["eval"][key]).expanduser()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
            digests[f"eval.{key} (sha256)"] = digest
    return digests


def check_record(out: Path, cfg: DictConfig) -> None:
    """Stop when the run folder's record was made with a config that gives other results."""
    path = out / RECORD
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    config = OmegaConf.to_container(cfg, resolve=True)
    old = {**result_keys(stored["config"]), **stored.get("input_files", {})}
    new = {**result_keys(config), **_input_files(config)}
    differ = sorted(k for k in old.keys() | new.keys()
                    if old.get(k) != new.get(k) and not (k not in old and _added_and_unused(k, new)))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
        raise RecordMismatchError(
            f"{out} holds eval results made with another config ({shown}{', ...' if len(differ) > 6 else ''}). "
            "Give the same overrides to continue it, or evaluate into a new folder (hydra.run.dir=...)."
        )


def open_record(out: Path, cfg: DictConfig) -> None:
    """Check the run folder's record against this config (or start one), then store this config."""
    check_record(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    _write_json_atomic(out / RECORD, {"format": RECORD_FORMAT, "config": config, "input_files": _input_files(config)})


def recorded_config(out: Path) -> DictConfig:
    """The config of a run folder's record (for `python -m coz_train.eval.merge <run>`)."""
    path = Path(out) / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out} is not the folder of a `python -m coz_train.eval` run.")
    return OmegaConf.create(json.loads(path.read_text())["config"])
