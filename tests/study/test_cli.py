"""`python -m coz_train.study` as a user runs it: build, invite, serve, a server killed mid-study and restarted."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from conftest import CONDITIONS
from study_helpers import ServeProcess, free_port, invitations, manifest

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first
ENV = {**os.environ, "HYDRA_FULL_ERROR": ""}


def study_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coz_train.study", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_build_invite_and_errors_from_the_command_line(eval_run, tmp_path):
    study = tmp_path / "cli"
    built = study_cli("build", str(eval_run), "study.name=cli", f"study.dir={study}",
                      f"study.conditions=[{','.join(CONDITIONS)}]", "server.port=9999")
    assert built.returncode == 0, built.stderr
    assert "Invitation links" in built.stderr and "http://127.0.0.1:9999/r/" in built.stderr
    assert (study / "manifest.json").is_file()
    assert (study / "admin.txt").read_text().startswith("http://127.0.0.1:9999/admin/")
    invited = study_cli("invite", str(study), "invite.raters=2")
    assert invited.returncode == 0 and "r05" in invited.stderr
    assert set(invitations(study)) == {f"r0{n}" for n in range(1, 6)}
    for args, code, message in [
        ((), 2, "usage:"),
        (("build", str(eval_run)), 2, "build needs study.name=<name>"),
        (("build", str(eval_run), "study.name=x", "study.nmae=1"), 1, "Could not override 'study.nmae'"),
        (("build", str(eval_run), "study.name=x", "study.raters=many"), 1, "study.raters"),
        (("build", str(tmp_path / "nothing"), "study.name=x", f"study.dir={tmp_path / 'x'}"), 1,
         "no per-sample/ folder"),
        (("serve", str(tmp_path)), 1, "manifest.json not found: give a study folder"),
        (("serve", str(study), str(study)), 1, "`serve` takes one study folder"),
        (("invite", str(study), "invite.raters=0"), 1, "must be at least 1"),
    ]:
        result = study_cli(*args)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_server_killed_mid_study_and_restarted_loses_and_doubles_nothing(eval_run, tmp_path):
    study = tmp_path / "killed"
    assert study_cli("build", str(eval_run), "study.name=killed", f"study.dir={study}", "study.raters=2",
                     f"study.conditions=[{','.join(CONDITIONS)}]").returncode == 0
    tokens = invitations(study)
    plan = {(rater, t["task"]): {"score": 1 + n % 5, "submission": uuid.uuid4().hex}
            for rater in tokens for n, t in enumerate(manifest(study)["raters"][rater])}
    confirmed: set = set()
    port = free_port()
    server = ServeProcess(study, port)

    def rater(name: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for (who, task), a in plan.items():
                if who != name or stop.is_set():
                    continue
                try:
                    body = {"task": task, "score": a["score"], "seconds": 1, "submission": a["submission"]}
                    r = client.post(f"/api/r/{tokens[who]}/answer", json=body)
                    if r.status_code == 200:
                        confirmed.add((who, task))
                except httpx.TransportError:
                    return  # the server died under us

    stop = threading.Event()
    threads = [threading.Thread(target=rater, args=(name, stop)) for name in tokens]
    for t in threads:
        t.start()
    while len(confirmed) < len(plan) // 3:
        time.sleep(0.01)
    server.kill()  # SIGKILL while both raters are sending
    stop.set()
    for t in threads:
        t.join(timeout=30)
    db = sqlite3.connect(study / "study.sqlite")
    stored = {(r, t) for r, t in db.execute("SELECT rater, task FROM answers")}
    db.close()
    assert confirmed <= stored  # every answer a rater was told is stored, is stored
    assert len(stored) < len(plan)

    server = ServeProcess(study, port)  # restarted: the raters resume (state), re-send what went unconfirmed
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for name, token in tokens.items():
            state = client.get(f"/api/r/{token}/state").json()
            assert set(state["answers"]) == {t for r, t in stored if r == name}
            first_open = next((n for n, t in enumerate(state["tasks"]) if t["task"] not in state["answers"]), None)
            assert state["next"] == first_open
        duplicates = 0
        for (who, task), a in plan.items():  # the same submission ids: whatever the dead server stored is not doubled
            r = client.post(f"/api/r/{tokens[who]}/answer",
                            json={"task": task, "score": a["score"], "seconds": 1, "submission": a["submission"]})
            assert r.status_code == 200
            duplicates += r.json()["duplicate"]
        assert duplicates == len(stored)
    server.kill()
    db = sqlite3.connect(study / "study.sqlite")
    answers = {(r, t): s for r, t, s in db.execute("SELECT rater, task, score FROM answers")}
    assert answers == {k: a["score"] for k, a in plan.items()}
    assert db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == len(plan)
    assert db.execute("SELECT MAX(changes) FROM answers").fetchone()[0] == 0
    db.close()


def test_analyze_reads_every_answer_from_the_store_and_writes_the_results(make_study, tmp_path, caplog, capsys):
    import csv

    from coz_train.study.__main__ import main
    from coz_train.study.ratings import read_csv
    from coz_train.study.store import Store

    study = make_study("study.raters=6")
    empty = make_study("study.raters=1")
    assert main(["analyze", str(empty)]) == 1 and "no answers yet" in capsys.readouterr().err
    quality = {"onestep-null": 2, "recursive-vlm": 3, "recursive_multiscale-vlm": 4, "control:nearest": 1,
               "control:mismatched-text": 1}
    store = Store(study / "study.sqlite")
    for n, rater in enumerate(store.raters()):
        for k, task in enumerate(store.tasks(rater)):
            careless = rater == "r06"  # 5 for everything, the degraded controls too: screening flags it
            score = 5 if careless else min(5, max(1, quality[task["condition"]] + (n + k) % 3 - 1))
            store.answer(rater, task["task"], score, None, 2.0, uuid.uuid4().hex)
    ratings = store.ratings()
    store.close()

    caplog.set_level("INFO")
    assert main(["analyze", str(study), "analyze.n_boot=50", "analyze.seed=3"]) == 0
    out = study / "results"
    assert {p.name for p in out.iterdir()} >= {"results.md", "results.csv", "ratings.csv", "results.png"}
    assert f"results in {out}" in caplog.text
    assert read_csv(out / "ratings.csv") == ratings  # every answer the store holds, as the Rating record
    rows = list(csv.DictReader((out / "results.csv").open()))
    primary = {r["raters"] for r in rows if r["primary"] == "1" and r["section"] == "mos"}
    assert primary == {"screened"}  # analyze.drop_flagged=true: flagged raters dropped
    assert any(r["section"] == "screening" and r["condition"] == "r06" for r in rows)
    assert "50 two-way bootstrap" in (out / "results.md").read_text()
    if os.environ.get("COZ_TRAIN_STUDY_FIGURE"):  # docs/figures/study_results.png, shown in docs/study.md
        shutil.copyfile(out / "results.png", os.environ["COZ_TRAIN_STUDY_FIGURE"])
    mos = {(r["test"], r["condition"]): float(r["estimate"]) for r in rows
           if r["section"] == "mos" and r["primary"] == "1"}
    assert mos[("image", "onestep-null")] < mos[("image", "recursive-vlm")] < mos[("image", "recursive_multiscale-vlm")]

    kept = tmp_path / "kept"
    assert main(["analyze", str(study), "analyze.n_boot=50", "analyze.drop_flagged=false", f"analyze.out={kept}",
                 "logging.wandb=true", "logging.mode=offline"]) == 0
    rows = list(csv.DictReader((kept / "results.csv").open()))
    assert {r["raters"] for r in rows if r["primary"] == "1" and r["section"] == "mos"} == {"all"}
    assert list((kept / "wandb").glob("offline-run-*"))  # the results went to an offline wandb run
