"""A prompt holding control characters reaches the rating page with them escaped, as every figure draws it."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from conftest import CONDITIONS
from study_helpers import invitations

from coz_train.study.build import build
from coz_train.study.config import load_config

pytestmark = pytest.mark.slow  # the session's smoke evaluation (~30 s) comes first


def test_control_characters_of_a_prompt_are_served_escaped(eval_run, tmp_path, live_server):
    run = tmp_path / "run"
    shutil.copytree(eval_run, run)
    for path in run.glob("per-sample/*/*-vlm/prompts.json"):  # what a VLM's byte fallback can write
        prompts = json.loads(path.read_text())
        path.write_text(json.dumps({k: f"stone\x10wall\t{v}" for k, v in prompts.items()}))
    study = build([str(run)], load_config(["study.name=escaped", f"study.dir={tmp_path / 'escaped'}",
                                          f"study.conditions=[{','.join(CONDITIONS)}]", "study.raters=1"]))
    server = live_server(study)
    state = httpx.get(f"{server.url}/api/r/{invitations(study)['r01']}/state", timeout=10).json()
    texts = [p["text"] for t in state["tasks"] for p in t["panels"] if p["text"]]
    texts += [a["text"] for a in state["anchors"].get("text", [])]
    assert texts and all(t.startswith("stone\\x10wall\\x09") for t in texts), texts[:3]
    assert not any(ch in t for t in texts for ch in "\x10\t")
    stored = json.loads((study / "manifest.json").read_text())["stimuli"]["ordinary"]["text"]
    assert stored[0]["panels"][0]["text"].startswith("stone\x10wall\t")  # the prompt itself is kept as written
