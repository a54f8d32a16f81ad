"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, a page missing from
the nav or a nav entry without its page, a config key a page names that no schema has, all fail it. mkdocs is
in the test extra: a missing mkdocs fails this test, it is not skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mkdocs  # noqa: F401 - the docs packages are part of the test extra: fail here, do not skip

from coz_train.docs_reference.pages import PAGES

REPO = Path(__file__).resolve().parents[2]


def build(site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_site_builds_strict_with_the_generated_reference(tmp_path):
    site = tmp_path / "site"
    result = build(site)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for page in PAGES:
        html = (site / page.removesuffix(".md") / "index.html").read_text()
        assert "Written from the code" in html, page
    configuration = (site / "reference" / "configuration" / "index.html").read_text()
    assert 'id="data.backbone"' in configuration and "data.upscaler" in configuration
    assert not (REPO / "docs" / "reference").exists()  # generated into the site only, never into docs/


def test_the_site_uses_no_web_font_and_no_fetching_plugin():
    config = (REPO / "mkdocs.yml").read_text()
    assert re.search(r"^\s+font: false\b", config, re.M)
    plugins = re.search(r"^plugins:\n((?:\s+- .*\n)+)", config, re.M).group(1)
    assert [p.split("#")[0].strip(" -") for p in plugins.splitlines()] == ["search"]
