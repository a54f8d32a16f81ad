"""The study folders hold rater tokens in clear (invitations.csv, admin.txt): git must never pick them up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["studies/pilot/invitations.csv", "studies/pilot/admin.txt",
                                  "studies/pilot.partial/invitations.csv", "studies/pilot/results/ratings.csv"])
def test_the_default_study_folder_is_ignored_by_git(path: str) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an installed package): no .gitignore to check")
    checked = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True,
                             text=True)
    assert checked.returncode == 0, f"{path} is not ignored by {ROOT / '.gitignore'}: {checked.stderr}"
