import json

import pytest
from PIL import Image

from coz_train.eval.report import load_history, reward_curves


def write_history(run, entries):
    run.mkdir(parents=True, exist_ok=True)
    (run / "log_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def entry(step, critic):
    return {"step": step, "reward": critic + 0.5, "reward_std": 0.1, "rewards/critic/mean": critic,
            "rewards/critic/std": 0.05, "rewards/phrase_exclusion/mean": 1.0, "rewards/repetition/mean": 0.0}


def test_curves_from_log_history(tmp_path):
    run = tmp_path / "run"
    write_history(run, [entry(1, 0.2), entry(2, 0.3), {"step": 2, "train_runtime": 1.0}, entry(2, 0.35), entry(3, 0.4)])
    history = load_history(run)
    assert [e["step"] for e in history] == [1, 2, 3]
    assert history[1]["rewards/critic/mean"] == 0.35  # a step logged again after a resume: the last one wins
    path = reward_curves(run)
    assert path == run / "reward_curves.png"
    assert Image.open(path).size[0] > 4 * 300  # total + three components side by side


def test_curves_from_a_checkpoint_and_errors(tmp_path):
    run = tmp_path / "old"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"log_history": [entry(1, 0.1), entry(10, 0.5)]}))
    assert [e["step"] for e in load_history(run)] == [1, 10]
    with pytest.raises(FileNotFoundError, match="log_history.jsonl"):
        load_history(tmp_path / "empty")
    write_history(tmp_path / "norewards", [{"step": 1, "loss": 0.1}])
    with pytest.raises(ValueError, match="No reward"):
        load_history(tmp_path / "norewards")
