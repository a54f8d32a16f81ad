"""The study's SQLite store (`<study>/study.sqlite`): raters, their tasks, every answer.

Why it cannot lose or double an answer:
- WAL journal, `synchronous=FULL`: a committed answer survives the server being killed (and a power cut);
- one `BEGIN IMMEDIATE` transaction per answer: the submission log row and the answer row are written
  together or not at all;
- `answers` has one row per (rater, task), so answering again (back, a reload, a second tab) replaces
  the answer and counts its `changes`; it never adds a second rating;
- each submission carries a client-made id (`submissions` primary key): a request retried after a lost
  response, or a double click, is recognised and changes nothing.
Tokens are stored as SHA-256 hashes only, so the database can be shared for analysis without them.

Tables (schema version in `meta`): `meta(key, value)`, `raters(rater, number, token_sha256, created)`,
`tasks(rater, task, position, spec)` (spec: the task as JSON, `coz_train.study.tasks`),
`answers(rater, task, score, choice, answered_at, seconds, changes)`,
`submissions(submission, rater, task, score, choice, received_at, seconds)`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coz_train.study.ratings import Rating

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE raters (
    rater TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE, token_sha256 TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE tasks (
    rater TEXT NOT NULL REFERENCES raters(rater), task TEXT NOT NULL, position INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (rater, task), UNIQUE (rater, position));
CREATE TABLE answers (
    rater TEXT NOT NULL, task TEXT NOT NULL, score INTEGER, choice TEXT, answered_at REAL NOT NULL,
    seconds REAL NOT NULL, changes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rater, task), FOREIGN KEY (rater, task) REFERENCES tasks(rater, task),
    CHECK (score IS NULL OR score BETWEEN 1 AND 5), CHECK (choice IS NULL OR choice IN ('left', 'right', 'unsure')),
    CHECK ((score IS NULL) <> (choice IS NULL)));
CREATE TABLE submissions (
    submission TEXT PRIMARY KEY, rater TEXT NOT NULL, task TEXT NOT NULL, score INTEGER, choice TEXT,
    received_at REAL NOT NULL, seconds REAL NOT NULL);
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    """What one submission did: `duplicate` if its id was seen before (nothing written)."""

    duplicate: bool
    answered: int  # the rater's answered tasks after it
    total: int


class StoreError(RuntimeError):
    pass


class Store:
    """One connection, serialised by a lock (SQLite serialises writers anyway); safe from the server's threads."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if create and self.path.exists():
            raise FileExistsError(f"{self.path} exists: a study folder is built once (choose another study.name "
                                  "or remove the folder).")
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found: is this a study folder made by "
                                    "`python -m coz_train.study build`?")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            self._db.execute(f"PRAGMA {pragma}")
        if create:
            with self._lock:
                self._db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} "
                                       f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;")
        version = self.meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path} has schema version {version}, this coz_train reads {SCHEMA_VERSION}: "
                             "use the coz_train version that built the study.")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- study set-up (build, invite)
    def meta(self, key: str) -> str | None:
        try:
            rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        except sqlite3.OperationalError as err:
            raise StoreError(f"{self.path} is not a study database ({err}).") from err
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (key, value))

    def add_rater(self, rater: str, number: int, token: str, tasks: list[dict]) -> None:
        with self._write() as db:
            db.execute("INSERT INTO raters VALUES (?, ?, ?, ?)", (rater, number, token_hash(token), time.time()))
            db.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?)",
                           [(rater, t["task"], n, json.dumps(t)) for n, t in enumerate(tasks)])

    def raters(self) -> list[str]:
        return [r["rater"] for r in self._read("SELECT rater FROM raters ORDER BY number")]

    def next_number(self) -> int:
        rows = self._read("SELECT COALESCE(MAX(number) + 1, 0) AS n FROM raters")
        return int(rows[0]["n"])

    # --- serving
    def rater_for_token(self, token: str) -> str | None:
        rows = self._read("SELECT rater FROM raters WHERE token_sha256 = ?", (token_hash(token),))
        return rows[0]["rater"] if rows else None

    def is_admin(self, token: str) -> bool:
        stored = self.meta("admin_token_sha256") or ""
        return bool(stored) and hmac.compare_digest(stored, token_hash(token))

    def tasks(self, rater: str) -> list[dict]:
        rows = self._read("SELECT spec FROM tasks WHERE rater = ? ORDER BY position", (rater,))
        return [json.loads(r["spec"]) for r in rows]

    def task(self, rater: str, task: str) -> dict | None:
        rows = self._read("SELECT spec FROM tasks WHERE rater = ? AND task = ?", (rater, task))
        return json.loads(rows[0]["spec"]) if rows else None

    def answers(self, rater: str) -> dict[str, dict]:
        rows = self._read("SELECT task, score, choice FROM answers WHERE rater = ?", (rater,))
        return {r["task"]: {"score": r["score"], "choice": r["choice"]} for r in rows}

    def answer(self, rater: str, task: str, score: int | None, choice: str | None, seconds: float,
               submission: str) -> Stored:
        """Store one answer in one transaction; a submission id seen before changes nothing."""
        now = time.time()
        with self._write() as db:
            seen = db.execute("SELECT 1 FROM submissions WHERE submission = ?", (submission,)).fetchone()
            if not seen:
                db.execute("INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (submission, rater, task, score, choice, now, seconds))
                db.execute(
                    "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT(rater, task) DO UPDATE SET "
                    "score = excluded.score, choice = excluded.choice, answered_at = excluded.answered_at, "
                    "seconds = answers.seconds + excluded.seconds, changes = answers.changes + "
                    "(answers.score IS NOT excluded.score OR answers.choice IS NOT excluded.choice)",
                    (rater, task, score, choice, now, seconds))
            answered = db.execute("SELECT COUNT(*) FROM answers WHERE rater = ?", (rater,)).fetchone()[0]
            total = db.execute("SELECT COUNT(*) FROM tasks WHERE rater = ?", (rater,)).fetchone()[0]
        return Stored(bool(seen), int(answered), int(total))

    # --- results
    def progress(self) -> list[dict]:
        rows = self._read(
            "SELECT r.rater, (SELECT COUNT(*) FROM tasks t WHERE t.rater = r.rater) AS total, "
            "(SELECT COUNT(*) FROM answers a WHERE a.rater = r.rater) AS answered, "
            "(SELECT MAX(answered_at) FROM answers a WHERE a.rater = r.rater) AS last_answer "
            "FROM raters r ORDER BY r.number")
        return [dict(r) for r in rows]

    def ratings(self) -> list[Rating]:
        """Every answer as a `Rating` (one per rater and task; the last answer given), in rater and task order."""
        rows = self._read(
            "SELECT a.rater, a.task, a.score, a.choice, a.answered_at, a.seconds, t.spec FROM answers a "
            "JOIN tasks t ON t.rater = a.rater AND t.task = a.task "
            "JOIN raters r ON r.rater = a.rater ORDER BY r.number, t.position")
        out = []
        for row in rows:
            spec = json.loads(row["spec"])
            out.append(Rating(
                rater=row["rater"], task=row["task"], test=spec["test"], kind=spec["kind"], item=spec["item"],
                scale=int(spec["scale"]), condition=spec["condition"], score=row["score"],
                condition_left=spec["condition_left"], condition_right=spec["condition_right"],
                choice=row["choice"] or "", check=spec["check"], repeat_of=spec["repeat_of"],
                answered_at=float(row["answered_at"]), seconds=float(row["seconds"])))
        return out
