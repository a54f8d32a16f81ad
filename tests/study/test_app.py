"""The rating app over real HTTP: what a rater and the admin may do, and bad input that must change nothing.

Every refused request asserts its 4xx, a JSON error saying what was wrong, and a database dump identical
to the one before it.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import uuid

import httpx
import pytest
from study_helpers import admin_token, invitations, manifest, snapshot

from coz_train.study.config import load_config
from coz_train.study.serve import StudyFolderError, make_server

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first


@pytest.fixture
def served(make_study, live_server):
    study = make_study("study.items_per_rater=1", "study.mode=pair", "study.unsure=false")
    return study, live_server(study)


def answer_body(task: str, **fields) -> dict:
    return {"task": task, "seconds": 1.0, "submission": uuid.uuid4().hex, **fields}


def test_a_rater_answers_and_sees_only_their_own_tasks_and_images(served):
    study, server = served
    tokens = invitations(study)
    with httpx.Client(base_url=server.url) as client:
        page = client.get(f"/r/{tokens['r01']}")
        assert page.status_code == 200 and "rate.js" in page.text
        for header, value in (("referrer-policy", "no-referrer"), ("x-content-type-options", "nosniff")):
            assert page.headers[header] == value
        assert "script-src 'self'" in page.headers["content-security-policy"]
        state = client.get(f"/api/r/{tokens['r01']}/state").json()
        assert state["rater"] == "r01" and state["next"] == 0 and state["answers"] == {}
        assert "condition" not in json.dumps(state["tasks"])  # blind: no condition, item or check reaches the browser
        first = state["tasks"][0]
        stored = client.post(f"/api/r/{tokens['r01']}/answer", json=answer_body(first["task"], choice="left"))
        assert stored.status_code == 200 and stored.json()["answered"] == 1 and stored.json()["next"] == 1
        mine = first["panels"][0]["images"][0]
        image = client.get(f"/media/{tokens['r01']}/{mine}.png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        # r02 has other items (items_per_rater=1): r01's images are not r02's to see
        theirs = {m for t in manifest(study)["raters"]["r02"] for p in t["panels"] for m in p["images"]}
        anchors = {m for a in manifest(study)["anchors"]["image"] for m in a["images"]}
        other = sorted(theirs - set(m for t in state["tasks"] for p in t["panels"] for m in p["images"]) - anchors)[0]
        before = snapshot(study)
        refused = client.get(f"/media/{tokens['r01']}/{other}.png")
        assert refused.status_code == 404 and "No such image for this rater" in refused.json()["error"]
        assert client.get(f"/media/{tokens['r02']}/{other}.png").status_code == 200
        assert snapshot(study) == before


def test_admin_page_needs_its_own_token_and_shows_progress_and_means(make_study, live_server):
    study = make_study("study.tests=[image]")
    server = live_server(study)
    tokens, admin = invitations(study), admin_token(study)
    with httpx.Client(base_url=server.url) as client:
        for n, t in enumerate(manifest(study)["raters"]["r02"][:5]):
            assert client.post(f"/api/r/{tokens['r02']}/answer", json=answer_body(t["task"], score=1 + n)).is_success
        assert client.get(f"/admin/{admin}").status_code == 200
        progress = client.get(f"/api/admin/{admin}/progress").json()
        assert [(p["rater"], p["answered"]) for p in progress["raters"]] == [("r01", 0), ("r02", 5), ("r03", 0)]
        assert sum(r["n"] for r in progress["results"]) == sum(1 for t in manifest(study)["raters"]["r02"][:5]
                                                               if not t["check"])
        before = snapshot(study)
        for url in (f"/admin/{tokens['r01']}", f"/api/admin/{tokens['r01']}/progress", "/admin/x",
                    f"/api/admin/{admin[:-1]}X/progress", f"/r/{admin}", f"/api/r/{admin}/state"):
            assert client.get(url).status_code == 404, url
        assert snapshot(study) == before


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"choice": "up"}, 422, r"takes a choice, one of \['left', 'right'\]"),
    ({"choice": "unsure"}, 422, r"one of \['left', 'right'\]"),  # study.unsure=false
    ({"score": 3}, 422, "takes a choice"),
    ({"choice": "left", "score": 3}, 422, "and no score"),
    ({"choice": "left", "seconds": -1}, 422, "seconds must be a number >= 0"),
    ({"choice": "left", "seconds": "soon"}, 422, "seconds must be a number"),
    ({"choice": "left", "submission": "x"}, 422, "submission must be a client-made id"),
    ({"choice": "left", "submission": "../../etc/passwd"}, 422, "submission must be"),
    ({"choice": "left", "task": "t9999"}, 404, "No task 't9999' for this rater"),
    ({"choice": "left", "task": ["t0001"]}, 404, "No task"),
    ({"choice": "left", "rater": "r02"}, 400, r"Unknown fields \['rater'\]"),
])
def test_bad_answers_get_a_4xx_and_change_nothing(served, body, status, message):
    study, server = served
    token = invitations(study)["r01"]
    before = snapshot(study)
    response = httpx.post(f"{server.url}/api/r/{token}/answer", json={**answer_body("t0001"), **body})
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"])
    assert snapshot(study) == before


def test_mos_scores_outside_the_scale_are_refused(make_study, live_server):
    study = make_study("study.tests=[image]")
    server = live_server(study)
    token = invitations(study)["r01"]
    before = snapshot(study)
    for score in (0, 6, -1, 3.5, "3", True, None, 10**30):
        response = httpx.post(f"{server.url}/api/r/{token}/answer", json=answer_body("t0001", score=score))
        assert response.status_code == 422 and "an integer 1..5" in response.json()["error"], score
    response = httpx.post(f"{server.url}/api/r/{token}/answer", content=b'{"task": "t0001", "score": NaN, '
                          b'"seconds": 1, "submission": "sub-nan-score"}', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert snapshot(study) == before


def test_malformed_and_oversized_requests_get_a_4xx_and_change_nothing(served):
    study, server = served
    token = invitations(study)["r01"]
    url = f"{server.url}/api/r/{token}/answer"
    json_type = {"content-type": "application/json"}
    before = snapshot(study)
    cases = [
        (httpx.post(url, content=b"{not json", headers=json_type), 400, "The body is not JSON"),
        (httpx.post(url, content=b"[1, 2]", headers=json_type), 400, "must be a JSON object"),
        (httpx.post(url, content=b"\xff\xfe", headers=json_type), 400, "not JSON"),
        (httpx.post(url, content=b"task=t0001&choice=left",
                    headers={"content-type": "application/x-www-form-urlencoded"}), 415, "application/json"),
        (httpx.post(url, content=b"{}" + b" " * 5000, headers=json_type), 413, "over 4096 bytes"),
        (httpx.get(url), 405, ""),
        (httpx.post(f"{server.url}/api/r/nottherightone1234/answer", json=answer_body("t0001", choice="left")), 404,
         "invitation link is not valid"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (status, response.text)
        assert message in response.json().get("error", "")
    # a body without Content-Length (chunked) is cut off at the same limit
    chunks = (b"{" + b" " * 1000 for _ in range(10))
    chunked = httpx.post(url, content=chunks, headers=json_type)
    assert chunked.status_code == 413
    assert snapshot(study) == before


def test_paths_from_the_client_never_reach_the_file_system(served):
    study, server = served
    token = invitations(study)["r01"]
    before = snapshot(study)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in (f"/media/{token}/../manifest.json", f"/media/{token}/..%2f..%2fstudy.sqlite.png",
                 f"/media/{token}/%2e%2e%2fstudy.png", "/static/../app.py", "/static/%2e%2e%2fapp.py",
                 "/static/rate.js%00.png", f"/media/{token}/{'0' * 15}.png", f"/media/{token}/{'g' * 16}.png",
                 "/static/.", "/../../etc/passwd"):
        conn.request("GET", path)  # sent as written: no client-side normalisation
        response = conn.getresponse()
        body = response.read()
        assert response.status in (400, 404), (path, response.status)
        assert b"SQLite" not in body and b"import" not in body and b"version" not in body
    conn.close()
    assert snapshot(study) == before


def test_a_base_url_prefix_serves_everything_under_it(make_study, live_server):
    study = make_study("study.tests=[image]")
    server = live_server(study, "server.base_url=https://lab.example.org/coz-study/")
    token = invitations(study)["r01"]
    with httpx.Client(base_url=server.url) as client:
        assert client.get(f"/coz-study/r/{token}").status_code == 200
        assert client.get("/coz-study/static/rate.js").status_code == 200
        assert client.get(f"/r/{token}").status_code == 404
        task = client.get(f"/coz-study/api/r/{token}/state").json()["tasks"][0]["task"]
        assert client.post(f"/coz-study/api/r/{token}/answer", json=answer_body(task, score=3)).is_success


def test_serve_binds_to_loopback_and_refuses_a_study_whose_images_are_gone(make_study, tmp_path):
    assert load_config([]).server.host == "127.0.0.1"
    study = make_study("study.tests=[image]")
    moved = tmp_path / "moved"
    shutil.copytree(study, moved)
    shutil.rmtree(moved / "media")
    before = snapshot(moved)
    with pytest.raises(StudyFolderError, match=r"images are missing \(e\.g\. media/.*\.png\).*Restore media/"):
        make_server(moved, load_config([]))
    with pytest.raises(FileNotFoundError, match="manifest.json not found: give a study folder"):
        make_server(tmp_path, load_config([]))
    assert snapshot(moved) == before
