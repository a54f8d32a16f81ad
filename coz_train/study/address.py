"""Where raters reach a study: the link in front of `/r/<token>`, and the address a running `serve` recorded.

`serve` writes `<study>/server.json` (its link, host, port, base_url, process id and machine) while it runs
and removes it when it stops, so that `invite`, run beside it in another shell, writes links to the address
the study is actually served on (`invite_link`): `server.base_url` when given to `invite`, else the address
of the running server (its base_url when it was served with one), else the configured host and port. A
record left by a server that was killed is recognised by its process being gone (on the same machine) and
ignored.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)
RECORD = "server.json"


def base_link(server: DictConfig) -> str:
    """Where raters reach the app: server.base_url, else http://<host>:<port>."""
    if server.base_url:
        return str(server.base_url).rstrip("/")
    host = server.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{server.port}"


def record_address(folder: Path, server: DictConfig) -> Path:
    """`<folder>/server.json` for the server about to run with `server`; returns its path."""
    path = folder / RECORD
    data = {"link": base_link(server), "host": server.host, "port": server.port, "base_url": server.base_url,
            "pid": os.getpid(), "machine": socket.gethostname()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def forget_address(folder: Path) -> None:
    """Removes the record when it is this process's (a second server of the study may have replaced it)."""
    path = folder / RECORD
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def served_address(folder: Path) -> dict | None:
    """The record of the server running this study now, or None (no record, an unreadable one, a dead server)."""
    path = folder / RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s): ignored; serve the study again to rewrite it.", path, err)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("link"), str) or not isinstance(data.get("pid"), int):
        log.warning("%s is not a record written by `serve`: ignored.", path)
        return None
    if data.get("machine") == socket.gethostname() and not _alive(data["pid"]):
        return None  # left by a server that was killed
    return data


def invite_link(folder: Path, server: DictConfig) -> str:
    """The link for new invitations, logged with where it comes from."""
    if server.base_url:
        link = base_link(server)
        log.info("Links use server.base_url: %s", link)
        return link
    running = served_address(folder)
    if running is not None:
        log.info("Links use the address the study is served on now (%s, %s): %s", folder / RECORD,
                 f"process {running['pid']} on {running.get('machine')}", running["link"])
        return running["link"].rstrip("/")
    link = base_link(server)
    log.info("Links use the configured address (server.host, server.port; the study is not being served): %s. "
             "`serve` rewrites them for the address it serves on.", link)
    return link
