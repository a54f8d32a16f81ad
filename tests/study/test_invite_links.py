"""`invite` beside a running `serve`: the new links use the address the study is served on, and open."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from study_helpers import ServeProcess, free_port, invitations

from coz_train.study.__main__ import main

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first


def links(study: Path) -> dict[str, str]:
    import csv

    return {row["rater"]: row["link"] for row in csv.DictReader((study / "invitations.csv").open())}


def invite(study: Path, caplog: pytest.LogCaptureFixture, *overrides: str) -> str:
    caplog.clear()
    assert main(["invite", str(study), *overrides]) == 0
    return caplog.text


def opens(url: str) -> None:
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200, (url, page.status_code, page.text[:200])
    assert "rate.js" in page.text  # the rating page


def test_invite_writes_links_for_the_port_the_study_is_served_on(make_study, caplog):
    caplog.set_level("INFO")
    study = make_study("study.raters=1")  # built with the configured address, http://127.0.0.1:8765
    port = free_port()
    assert port != 8765
    server = ServeProcess(study, port)
    try:
        assert (study / "server.json").is_file()
        log = invite(study, caplog)
        new = links(study)["r02"]
        assert new == f"http://127.0.0.1:{port}/r/{invitations(study)['r02']}"
        assert "the address the study is served on now" in log and f"http://127.0.0.1:{port}" in log
        opens(new)
        log = invite(study, caplog, "server.base_url=https://lab.example.org/other")  # given to invite: it wins
        assert links(study)["r03"].startswith("https://lab.example.org/other/r/") and "server.base_url" in log
    finally:
        server.stop()
    assert not (study / "server.json").exists()  # removed when serve stops
    log = invite(study, caplog)
    assert links(study)["r04"].startswith("http://127.0.0.1:8765/r/") and "configured address" in log


def test_invite_writes_links_for_the_base_url_the_study_is_served_behind(make_study, caplog):
    caplog.set_level("INFO")
    study = make_study("study.raters=1")
    server = ServeProcess(study, free_port(), "server.base_url=https://lab.example.org/study")
    try:
        log = invite(study, caplog)
        token = invitations(study)["r02"]
        assert links(study)["r02"] == f"https://lab.example.org/study/r/{token}"
        assert "https://lab.example.org/study" in log
        assert links(study)["r01"].startswith("https://lab.example.org/study/r/")  # serve relinked the older one
        opens(f"{server.url}/study/r/{token}")  # the path of the link, as the reverse proxy passes it on
    finally:
        server.kill()  # a server killed leaves its record behind: invite sees the process is gone
    assert (study / "server.json").is_file()
    log = invite(study, caplog)
    assert links(study)["r03"].startswith("http://127.0.0.1:8765/r/") and "configured address" in log
