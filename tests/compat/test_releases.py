"""The newest release from a JSON API shaped as PyPI's (served over HTTP), and versions given by hand."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coz_train.compat.bounds import LIBRARIES
from coz_train.compat.releases import given_versions, newest_releases

FILE = {"filename": "x.whl", "yanked": False}
PROJECTS = {
    "transformers": {"info": {"name": "transformers", "version": "5.26.0"}, "releases": {
        "5.24.0": [FILE], "5.25.0": [FILE], "5.26.0": [FILE], "5.27.0rc1": [FILE], "5.27.0.dev0": [FILE],
        "5.10.4": [FILE]}},  # 5.10 sorts after 5.26 as text, before it as a version
    "trl": {"info": {"name": "trl"}, "releases": {
        "1.16.0": [FILE], "1.17.0": [dict(FILE, yanked=True)], "1.16.1": [FILE, dict(FILE, yanked=True)],
        "1.18.0": []}},  # 1.17.0 wholly yanked, 1.18.0 without files
    "peft": {"info": {"name": "peft"}, "releases": {"0.21.2": [FILE], "not-a-version": [FILE]}},
    "accelerate": {"info": {"name": "accelerate"}, "releases": {"1.16.0rc1": [FILE]}},
}


@pytest.fixture(scope="module")
def index():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.strip("/").split("/")[0]
            body = json.dumps(PROJECTS[name]).encode() if name in PROJECTS else b'{"message": "Not Found"}'
            self.send_response(200 if name in PROJECTS else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_newest_final_release_with_files_not_yanked(index):
    found = newest_releases(("transformers", "trl", "peft"), {}, index)
    assert found == {"transformers": ("5.26.0", "PyPI"), "trl": ("1.16.1", "PyPI"), "peft": ("0.21.2", "PyPI")}


def test_a_project_without_a_final_release_is_named(index):
    with pytest.raises(ValueError, match=r"no final release of accelerate"):
        newest_releases(("accelerate",), {}, index)


def test_versions_given_by_hand_are_not_asked_for(index):
    found = newest_releases(("transformers", "accelerate"), {"accelerate": "1.17.0"}, index)
    assert found == {"transformers": ("5.26.0", "PyPI"), "accelerate": ("1.17.0", "given")}


def test_an_unreachable_index_says_how_to_give_the_version(index):
    with pytest.raises(ValueError, match=r"could not read the newest transformers release from http://127.0.0.1:1/"
                                         r"transformers/json .*--versions transformers==<version>"):
        newest_releases(("transformers",), {}, "http://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"404"):
        newest_releases(("transformers",), {}, f"{index}/elsewhere")


def test_given_versions_are_checked():
    assert given_versions(["Transformers==5.26.0", "trl==1.17.0"], LIBRARIES) == {"transformers": "5.26.0",
                                                                                  "trl": "1.17.0"}
    with pytest.raises(ValueError, match=r"--versions 'transformers>=5.26': write name==version"):
        given_versions(["transformers>=5.26"], LIBRARIES)
    with pytest.raises(ValueError, match=r"torch is not one of the checked libraries \(transformers, trl, peft, "):
        given_versions(["torch==2.15.0"], LIBRARIES)
    with pytest.raises(ValueError, match=r"'five' is not a version number"):
        given_versions(["trl==five"], LIBRARIES)
