"""Load on loopback: 50 raters answering at once, with double submits and changed answers, lose nothing."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import httpx
import pytest
from study_helpers import invitations

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first
RATERS = 50
TIME_LIMIT_S = 90  # two shared CPU cores; each answer is one fsync'ed transaction


def test_fifty_raters_answering_concurrently_lose_nothing(make_study, live_server):
    # 2 items per rater: 6 image + 4 text tasks + 2 controls = 12 tasks each, 600 in all
    study = make_study(f"study.raters={RATERS}", "study.items_per_rater=2", "study.checks.repeats=0")
    server = live_server(study)
    tokens = invitations(study)
    assert len(tokens) == RATERS
    expected: dict[tuple[str, str], int] = {}
    sent = {"requests": 0, "duplicates": 0}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(RATERS)

    def rater(name: str, token: str, n: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                tasks = client.get(f"/api/r/{token}/state").json()["tasks"]
                start.wait(timeout=60)
                for k, task in enumerate(tasks):
                    body = {"task": task["task"], "score": 1 + (n + k) % 5, "seconds": 0.5,
                            "submission": uuid.uuid4().hex}
                    copies = 2 if k % 4 == 0 else 1  # a double submit: the same request twice
                    for _ in range(copies):
                        r = client.post(f"/api/r/{token}/answer", json=body)
                        assert r.status_code == 200, r.text
                        with lock:
                            sent["requests"] += 1
                            sent["duplicates"] += r.json()["duplicate"]
                    if k % 5 == 2:  # back and a changed answer
                        body = {**body, "score": 1 + (body["score"] % 5), "submission": uuid.uuid4().hex}
                        assert client.post(f"/api/r/{token}/answer", json=body).status_code == 200
                    with lock:
                        expected[name, task["task"]] = body["score"]
        except Exception as err:  # reported below: an assert in a thread would be lost
            errors.append(f"{name}: {type(err).__name__}: {err}")

    began = time.perf_counter()
    threads = [threading.Thread(target=rater, args=(name, token, n)) for n, (name, token) in enumerate(tokens.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIME_LIMIT_S)
    elapsed = time.perf_counter() - began
    assert not errors, errors[:5]
    assert not any(t.is_alive() for t in threads) and elapsed < TIME_LIMIT_S
    db = sqlite3.connect(study / "study.sqlite")
    stored = {(r, t): s for r, t, s in db.execute("SELECT rater, task, score FROM answers")}
    total_tasks = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    changed = db.execute("SELECT COUNT(*) FROM answers WHERE changes = 1").fetchone()[0]
    submissions = db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    db.close()
    assert stored == expected and len(stored) == total_tasks >= RATERS * 10
    assert sent["duplicates"] == sum(1 for (_, t) in expected if int(t[1:]) % 4 == 1)  # every double submit caught
    assert changed == sum(1 for (_, t) in expected if int(t[1:]) % 5 == 3)
    assert submissions == len(expected) + changed
    print(f"{len(expected)} answers from {RATERS} concurrent raters in {elapsed:.1f} s")
