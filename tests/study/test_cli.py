"""`python -m coz_train.study` as a user runs it: build, invite, serve, a server killed mid-study and restarted."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import CONDITIONS
from study_helpers import invitations, manifest

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first
ENV = {**os.environ, "HYDRA_FULL_ERROR": ""}


def study_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coz_train.study", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, study: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "coz_train.study", "serve", str(study),
                                      f"server.port={port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=ENV)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"serve did not start:\n{self.proc.stdout.read()}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def test_build_invite_and_errors_from_the_command_line(eval_run, tmp_path):
    study = tmp_path / "cli"
    built = study_cli("build", str(eval_run), "study.name=cli", f"study.dir={study}",
                      f"study.conditions=[{','.join(CONDITIONS)}]", "server.port=9999")
    assert built.returncode == 0, built.stderr
    assert "Invitation links" in built.stderr and "http://127.0.0.1:9999/r/" in built.stderr
    assert (study / "manifest.json").is_file() and (study / "admin.txt").read_text().startswith("http://127.0.0.1:9999/admin/")
    invited = study_cli("invite", str(study), "invite.raters=2")
    assert invited.returncode == 0 and "r05" in invited.stderr and set(invitations(study)) == {f"r0{n}" for n in range(1, 6)}
    for args, code, message in [
        ((), 2, "usage:"),
        (("build", str(eval_run)), 2, "build needs study.name=<name>"),
        (("build", str(eval_run), "study.name=x", "study.nmae=1"), 1, "Could not override 'study.nmae'"),
        (("build", str(eval_run), "study.name=x", "study.raters=many"), 1, "study.raters"),
        (("build", str(tmp_path / "nothing"), "study.name=x", f"study.dir={tmp_path / 'x'}"), 1, "no per-sample/ folder"),
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
                    r = client.post(f"/api/r/{tokens[who]}/answer",
                                    json={"task": task, "score": a["score"], "seconds": 1, "submission": a["submission"]})
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
