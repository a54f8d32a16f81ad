"""`serve`: the rating web app on uvicorn, after checking the study folder is whole.

    python -m coz_train.study serve studies/pilot                                # http://127.0.0.1:8765
    python -m coz_train.study serve studies/pilot server.host=0.0.0.0 server.port=8080 \
        server.base_url=https://lab.example.org/coz-study                         # behind a reverse proxy

Binds to 127.0.0.1 unless `server.host` says otherwise. Behind a proxy, `server.base_url` is the public
URL: its path is where the app's routes live (the proxy passes the path on unchanged, e.g. nginx
`location /coz-study/ { proxy_pass http://127.0.0.1:8765; }`) and the links printed use it. While it runs,
`<study>/server.json` records that address, so that `invite` writes links for it (`coz_train.study.address`).
A study whose images are gone (moved, deleted, a dangling copy) stops here, naming what is missing. Stop
with Ctrl-C: every answer was committed when the rater got its reply, so nothing is lost.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from coz_train.study.address import base_link, forget_address, record_address
from coz_train.study.app import make_app
from coz_train.study.build import read_manifest, write_invitations
from coz_train.study.media import missing_media
from coz_train.study.store import Store

log = logging.getLogger(__name__)


class StudyFolderError(FileNotFoundError):
    pass


def open_study(study_dir: str | Path) -> tuple[Path, dict, Store]:
    folder = Path(study_dir).expanduser().resolve()
    manifest = read_manifest(folder)
    missing = missing_media(folder, manifest["media"])
    if missing:
        raise StudyFolderError(
            f"{folder}: {len(missing)} of {len(manifest['media'])} images are missing (e.g. {missing[0]}): the study "
            "folder was moved in part or its media/ emptied. Restore media/ from a copy, or build the study again "
            "from its eval runs (they are listed in manifest.json).")
    return folder, manifest, Store(folder / "study.sqlite")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(study_dir: str | Path, cfg: DictConfig) -> tuple[uvicorn.Server, Store]:
    """The uvicorn server of a study (not started) and its store."""
    server = cfg.server
    folder, manifest, store = open_study(study_dir)
    app = make_app(folder, manifest, store, server.base_url, server.max_body_bytes)
    config = uvicorn.Config(app, host=server.host, port=server.port, access_log=server.access_log,
                            server_header=False, log_level="info", timeout_keep_alive=30, backlog=1024,
                            lifespan="off")
    return uvicorn.Server(config), store


def relink(folder: Path, cfg: DictConfig) -> str:
    """Rewrite invitations.csv's links for the address served now; returns the base link."""
    import csv

    link = base_link(cfg.server)
    invitations = folder / "invitations.csv"
    if invitations.is_file():
        rows = list(csv.DictReader(invitations.open()))
        write_invitations(folder, [{**r, "link": f"{link}/r/{r['token']}"} for r in rows])
    admin = folder / "admin.txt"
    if admin.is_file():
        token = admin.read_text().strip().rsplit("/", 1)[-1]
        admin.write_text(f"{link}/admin/{token}\n")
    return link


def serve(study_dir: str | Path, cfg: DictConfig, sockets: list[socket.socket] | None = None) -> None:
    server, store = make_server(study_dir, cfg)
    folder = Path(study_dir).expanduser().resolve()
    if not _loopback(cfg.server.host):
        log.warning("Serving on %s: reachable from other machines. Pages need a token, but put it behind HTTPS "
                    "(a reverse proxy, server.base_url) for a crowd study.", cfg.server.host)
    link = relink(folder, cfg)
    progress = store.progress()
    log.info("Study %s: %d raters, %d of %d tasks answered", folder.name, len(progress),
             sum(p["answered"] for p in progress), sum(p["total"] for p in progress))
    log.info("Invitation links (%s/r/<token>): %s; admin page: %s", link, folder / "invitations.csv",
             folder / "admin.txt")
    record_address(folder, cfg.server)  # for `invite` while this runs
    try:
        server.run(sockets=sockets)
    finally:
        forget_address(folder)
        store.close()
