"""The SQLite store: one answer per task, resubmissions recognised, a killed writer loses nothing committed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from coz_train.study.ratings import Rating
from coz_train.study.store import SCHEMA_VERSION, Store, StoreError


def task(n: int, kind: str = "mos", check: str = "", repeat_of: str = "") -> dict:
    pair = kind == "pair"
    return {"task": f"t{n:04d}", "test": "image", "kind": kind, "item": f"img@{4 ** (1 + n % 3)}x",
            "scale": 4 ** (1 + n % 3), "condition": "" if pair else "recursive_multiscale-vlm",
            "condition_left": "recursive-vlm" if pair else "", "condition_right": "onestep-null" if pair else "",
            "check": check, "repeat_of": repeat_of, "panels": [{"images": ["0" * 16], "text": ""}], "reference": None}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "study.sqlite", create=True)
    s.set_meta("admin_token_sha256", "x")
    s.add_rater("r01", 0, "tok-r01-0123456789", [task(1), task(2), task(3, "pair"), task(4, check="repeat",
                                                                                      repeat_of="t0001")])
    s.add_rater("r02", 1, "tok-r02-0123456789", [task(1), task(2, "pair")])
    yield s
    s.close()


def test_pragmas_schema_version_and_tokens(store, tmp_path):
    db = sqlite3.connect(tmp_path / "study.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert "tok-r01" not in "\n".join(db.iterdump())  # hashes only
    db.close()
    assert store.rater_for_token("tok-r02-0123456789") == "r02" and store.rater_for_token("nope") is None
    with pytest.raises(FileExistsError, match="a study folder is built once"):
        Store(tmp_path / "study.sqlite", create=True)
    with pytest.raises(FileNotFoundError, match="made by `python -m coz_train.study build`"):
        Store(tmp_path / "other.sqlite")
    db = sqlite3.connect(tmp_path / "study.sqlite")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99, this coz_train reads 1"):
        Store(tmp_path / "study.sqlite")


def test_one_answer_per_task_resubmission_changes_nothing_and_changes_are_counted(store, tmp_path):
    first = store.answer("r01", "t0001", 2, None, 3.0, "sub-aaaaaaaa")
    assert (first.duplicate, first.answered, first.total) == (False, 1, 4)
    again = store.answer("r01", "t0001", 2, None, 3.0, "sub-aaaaaaaa")  # a retried request: same id
    assert again.duplicate and again.answered == 1
    store.answer("r01", "t0001", 5, None, 1.5, "sub-bbbbbbbb")  # back, then a new answer
    store.answer("r01", "t0003", None, "left", 2.0, "sub-cccccccc")
    store.answer("r02", "t0001", 4, None, 1.0, "sub-dddddddd")
    ratings = store.ratings()
    assert [(r.rater, r.task, r.score, r.choice) for r in ratings] == [
        ("r01", "t0001", 5, ""), ("r01", "t0003", None, "left"), ("r02", "t0001", 4, "")]
    assert all(isinstance(r, Rating) for r in ratings)
    assert ratings[0].seconds == 4.5 and ratings[1].winner == "recursive-vlm" and ratings[1].condition_left
    db = sqlite3.connect(tmp_path / "study.sqlite")
    assert db.execute("SELECT changes FROM answers WHERE rater='r01' AND task='t0001'").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 4
    db.close()
    assert store.progress()[0] == {"rater": "r01", "total": 4, "answered": 2,
                                   "last_answer": store.progress()[0]["last_answer"]}


def test_the_database_refuses_what_the_app_must_never_send(store):
    for score, choice in ((0, None), (6, None), (None, "up"), (3, "left"), (None, None)):
        with pytest.raises(sqlite3.IntegrityError):
            store.answer("r01", "t0002", score, choice, 1.0, f"sub-{score}-{choice}-x")
    with pytest.raises(sqlite3.IntegrityError):  # no such task for that rater
        store.answer("r02", "t0003", None, "left", 1.0, "sub-unknown-task")
    assert store.ratings() == [] and store.answers("r01") == {}


def test_a_writer_killed_mid_study_loses_no_committed_answer(store, tmp_path):
    """A second process answers, reports each commit, and is SIGKILLed: every reported answer is there."""
    store.close()
    script = textwrap.dedent(f"""
        import sys, time
        from coz_train.study.store import Store
        s = Store({str(tmp_path / 'study.sqlite')!r})
        for n in range(10 ** 6):
            s.answer("r01", "t0001", 1 + n % 5, None, 0.1, f"sub-{{n:08d}}")
            print(n, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    reported = [proc.stdout.readline() for _ in range(30)]
    proc.kill()
    proc.wait(timeout=10)
    last = int(reported[-1])
    reopened = Store(tmp_path / "study.sqlite")
    (rating,) = [r for r in reopened.ratings() if r.rater == "r01"]
    assert reopened.answers("r01") == {"t0001": {"score": rating.score, "choice": None}}
    db = sqlite3.connect(tmp_path / "study.sqlite")
    committed = db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    db.close()
    assert committed >= last + 1  # every answer reported as stored is stored
    assert rating.score == 1 + (committed - 1) % 5  # and the answer is the last one committed, once
    reopened.close()
