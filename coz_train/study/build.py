"""`build` and `invite`: a study folder from eval runs, and more raters for it.

    python -m coz_train.study build outputs/smoke_eval/<time> study.name=pilot
    python -m coz_train.study invite studies/pilot invite.raters=5

`invite` writes its links for the address the study is served on (`coz_train.study.address.invite_link`).

The study folder (written as `<dir>.partial/` and renamed when complete, so a failed build leaves no
half study):
- `manifest.json`: the build's config, conditions per test, items, media (id -> file and where it came
  from), anchors, the stimuli, and every rater's task list (order, sides, hidden checks);
- `media/<id>.png`: the images, by id only (`coz_train.study.media`);
- `study.sqlite`: raters (token hashes), tasks, answers (`coz_train.study.store`);
- `invitations.csv` (rater, token, link) and `admin.txt` (the admin link), readable by the owner only:
  the tokens are nowhere else in clear.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from coz_train.study.address import base_link, invite_link
from coz_train.study.config import plain
from coz_train.study.media import MediaWriter
from coz_train.study.runs import read_runs
from coz_train.study.stimuli import Panel, Stimulus, StimulusSet, build_stimuli
from coz_train.study.store import Store, token_hash
from coz_train.study.tasks import rater_tasks

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)


def _json_write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _stimulus_json(s: Stimulus) -> dict:
    return {"test": s.test, "kind": s.kind, "item": s.item, "scale": s.scale, "conditions": list(s.conditions),
            "panels": [p.to_json() for p in s.panels], "reference": s.reference, "check": s.check}


def _stimulus(d: dict) -> Stimulus:
    return Stimulus(d["test"], d["kind"], d["item"], int(d["scale"]), tuple(d["conditions"]),
                    tuple(Panel(tuple(p["images"]), p["text"]) for p in d["panels"]), d["reference"], d["check"])


def stimuli_from_manifest(manifest: dict) -> StimulusSet:
    s = manifest["stimuli"]
    return StimulusSet(manifest["conditions"], manifest["test_conditions"], manifest["items"],
                       {t: [_stimulus(d) for d in v] for t, v in s["ordinary"].items()},
                       {t: [_stimulus(d) for d in v] for t, v in s["controls"].items()}, manifest["anchors"])


def read_manifest(study_dir: str | Path) -> dict:
    path = Path(study_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give a study folder made by `python -m coz_train.study build` "
                                "(studies/<study.name> by default).")
    manifest = json.loads(path.read_text())
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path} has manifest version {manifest.get('version')}, this coz_train reads "
                         f"{MANIFEST_VERSION}: use the coz_train version that built the study.")
    return manifest


def _add_raters(folder: Path, store: Store, manifest: dict, study: DictConfig, count: int, link: str) -> list[dict]:
    if count < 1:
        raise ValueError(f"The number of new raters must be at least 1, got {count} (study.raters / invite.raters).")
    stimuli = stimuli_from_manifest(manifest)
    made = []
    for _ in range(count):
        number = store.next_number()
        rater, token = f"r{number + 1:02d}", secrets.token_urlsafe(18)
        tasks = rater_tasks(stimuli, study, number)
        if not tasks:
            raise ValueError(f"Rater {rater} would get no task: the study has no items (check study.images, "
                             "study.scales, study.conditions).")
        store.add_rater(rater, number, token, tasks)
        manifest["raters"][rater] = tasks
        made.append({"rater": rater, "token": token, "link": f"{link}/r/{token}", "tasks": len(tasks)})
    _json_write(folder / MANIFEST, manifest)
    invitations = folder / "invitations.csv"
    rows = list(csv.DictReader(invitations.open())) if invitations.is_file() else []
    write_invitations(folder, rows + [{k: m[k] for k in ("rater", "token", "link")} for m in made])
    return made


def write_invitations(folder: Path, rows: list[dict]) -> None:
    from io import StringIO

    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=["rater", "token", "link"])
    writer.writeheader()
    writer.writerows(rows)
    _private_write(folder / "invitations.csv", text.getvalue())


def build(runs: list[str], cfg: DictConfig) -> Path:
    study = cfg.study
    folder = Path(study.dir).expanduser()
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists: a study is built once (pick another study.name or study.dir, or "
                              "remove that folder; `invite` adds raters to it).")
    runset = read_runs(runs, study.prefix_conditions)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        media = MediaWriter(partial, salt=f"coz_train.study:{study.seed}", mode=study.media)
        stimuli = build_stimuli(runset, study, media)
        store = Store(partial / "study.sqlite", create=True)
        admin = secrets.token_urlsafe(18)
        store.set_meta("name", study.name)
        store.set_meta("admin_token_sha256", token_hash(admin))
        manifest = {
            "version": MANIFEST_VERSION, "name": study.name, "created": time.time(),
            "runs": sorted({str(c.run) for c in runset.chains.values()}), "mode": study.mode,
            "tests": list(stimuli.test_conditions), "conditions": stimuli.conditions,
            "test_conditions": stimuli.test_conditions, "items": stimuli.items, "scales": runset.scales,
            "anchors": stimuli.anchors, "media": media.entries,
            "stimuli": {"ordinary": {t: [_stimulus_json(s) for s in v] for t, v in stimuli.ordinary.items()},
                        "controls": {t: [_stimulus_json(s) for s in v] for t, v in stimuli.controls.items()}},
            "config": {"study": plain(study)}, "raters": {},
        }
        link = base_link(cfg.server)
        made = _add_raters(partial, store, manifest, study, study.raters, link)
        _private_write(partial / "admin.txt", f"{link}/admin/{admin}\n")
        store.close()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()
    partial.rename(folder)
    counts = {t: len(v) for t, v in stimuli.ordinary.items()}
    log.info("Study %s: %s, %d items, conditions %s; stimuli per test %s; %d raters with %s tasks",
             folder, study.mode, len(stimuli.items), stimuli.test_conditions, counts, len(made),
             sorted({m["tasks"] for m in made}))
    log.info("Invitation links (also in %s):", folder / "invitations.csv")
    for m in made:
        log.info("  %s  %s", m["rater"], m["link"])
    log.info("Admin page (also in %s): %s/admin/%s", folder / "admin.txt", link, admin)
    log.info("Serve it: python -m coz_train.study serve %s", folder)
    return folder


def invite(study_dir: str | Path, cfg: DictConfig) -> list[dict]:
    folder = Path(study_dir).expanduser()
    manifest = read_manifest(folder)
    study = OmegaConf.create(manifest["config"]["study"])
    store = Store(folder / "study.sqlite")
    try:
        made = _add_raters(folder, store, manifest, study, cfg.invite.raters, invite_link(folder, cfg.server))
    finally:
        store.close()
    for m in made:
        log.info("  %s  %s  (%d tasks)", m["rater"], m["link"], m["tasks"])
    return made
