"""Helpers of the study tests: invitations, the database as SQL, a server in a thread of the test process."""

from __future__ import annotations

import csv
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

from coz_train.study.config import load_config


def invitations(study: Path) -> dict[str, str]:
    """rater -> token."""
    return {row["rater"]: row["token"] for row in csv.DictReader((study / "invitations.csv").open())}


def admin_token(study: Path) -> str:
    return (study / "admin.txt").read_text().strip().rsplit("/", 1)[-1]


def snapshot(study: Path) -> list[str]:
    """Every row of the study database, as SQL (a read-only connection)."""
    db = sqlite3.connect(f"file:{study / 'study.sqlite'}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def manifest(study: Path) -> dict:
    return json.loads((study / "manifest.json").read_text())


class LiveServer:
    """`coz_train.study.serve`'s server in a thread of the test process, on a free loopback port."""

    def __init__(self, study: Path, *overrides: str):
        from coz_train.study.serve import make_server

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        cfg = load_config([f"server.port={self.port}", *overrides])
        self.server, self.store = make_server(study, cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the study server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.store.close()
        self.sock.close()
