"""Helpers of the study tests: invitations, the database as SQL, a server in a thread of the test process, and
`python -m coz_train.study serve` in a process of its own."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from coz_train.study.app import base_path
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m coz_train.study serve <study> server.port=<port> [overrides]`, waited for until it answers;
    `app_url` is where its routes are on this machine (under the path of server.base_url, if given)."""

    def __init__(self, study: Path, port: int, *overrides: str):
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HYDRA_FULL_ERROR": ""}
        self.proc = subprocess.Popen([sys.executable, "-m", "coz_train.study", "serve", str(study),
                                      f"server.port={port}", *overrides], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        base_url = next((o.split("=", 1)[1] for o in overrides if o.startswith("server.base_url=")), None)
        self.app_url = self.url + base_path(base_url)  # where the app's routes are (a proxy passes the path on)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.app_url}/health", timeout=2).status_code == 200:
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

    def stop(self) -> str:
        """Ctrl-C, as a person stops it; returns what it printed."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        return out


def bar_colours(fig: Figure) -> list[dict[str, str]]:
    """Per panel: condition (its tick label) -> the colour of its bar."""
    panels = []
    for ax in fig.axes:
        ticks = {round(x): label.get_text().replace("\n", "") for x, label in zip(ax.get_xticks(),
                                                                               ax.get_xticklabels(), strict=True)}
        panels.append({ticks[round(bar.get_x() + bar.get_width() / 2)]: to_hex(bar.get_facecolor())
                       for bar in ax.patches})
    return panels


def assert_inside(fig: Figure, text: Text) -> None:
    """The text's box, as the renderer draws it, lies inside the figure."""
    fig.canvas.draw()
    box, frame = text.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)
