"""What a run shows on the console and writes to its log: log lines above the step bar, never on its line;
no cursor codes in the log file; the final count once; no DeepSpeed notice when DeepSpeed is not in use."""

from __future__ import annotations

import importlib.util
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from tqdm import tqdm
from transformers import TrainerControl, TrainerState, TrainingArguments

from coz_train.callbacks import RewardProgressCallback
from coz_train.progress import progress_bar


def screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: \\r returns to the line start, later characters overwrite."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[A", i):
            row, i = max(0, row - 1), i + 3
            continue
        ch = text[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
        else:
            line = lines[row]
            line.extend(" " * (col - len(line) + 1))
            line[col] = ch
            col += 1
    return ["".join(line).rstrip() for line in lines]


@contextmanager
def terminal(monkeypatch) -> Iterator[io.StringIO]:
    """stdout and stderr as one terminal, with a console handler on the root logger as Hydra configures it
    (entered in the test itself: pytest sets its own sys.stdout after fixtures are set up)."""
    term = io.StringIO()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        yield term
    finally:
        root.removeHandler(console)
        root.setLevel(old_level)


def test_log_lines_during_training_are_written_above_the_step_bar(tmp_path, monkeypatch):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state = TrainerState(max_steps=4, is_world_process_zero=True)
    control = TrainerControl()
    bar = RewardProgressCallback()
    with terminal(monkeypatch) as term:
        bar.on_train_begin(args, state, control)
        state.global_step = 1
        bar.on_step_end(args, state, control)
        logging.getLogger("coz_train.train").info("a line while the bar is open")
        bar.on_log(args, state, control, logs={"reward": 0.5, "rewards/critic/mean": 0.25, "kl": 0.01})
        state.global_step = 2
        bar.on_step_end(args, state, control)
        bar.on_train_end(args, state, control)
        console_handlers = [type(h) for h in logging.getLogger().handlers if getattr(h, "stream", None) is term]
    lines = screen(term.getvalue())
    assert "[coz_train.train][INFO] - a line while the bar is open" in lines, lines
    assert "[coz_train.callbacks][INFO] - step 1/4  reward 0.500  critic 0.250  kl 0.0100" in lines, lines
    assert any(line.startswith(" 50%|") and line.endswith("]") for line in lines), lines  # the bar, on its own line
    assert console_handlers == [logging.StreamHandler]  # the console handler is the original again after training


def test_a_bar_opened_inside_another_bar_logs_no_cursor_codes_and_the_final_count_once(tmp_path, monkeypatch):
    monkeypatch.setenv("COZ_PROGRESS_INTERVAL", "0")
    log = logging.getLogger("coz_train.test_progress")
    log.propagate = False
    log.setLevel(logging.INFO)
    log_file = logging.FileHandler(tmp_path / "train.log")
    log.addHandler(log_file)
    try:
        # as datasets' "Generating train split" bar around the zoom-pair builder
        with tqdm(total=3, file=io.StringIO(), desc="Generating train split"), \
                progress_bar(3, "zoom pairs", log) as bar:
            for _ in range(3):
                bar.update()
    finally:
        log.removeHandler(log_file)
        log_file.close()
    text = (tmp_path / "train.log").read_text()
    assert "\x1b" not in text, repr(text)
    assert len([line for line in text.splitlines() if "zoom pairs: 100%" in line]) == 1, text
    assert all(line.startswith("zoom pairs: ") for line in text.splitlines()), text


def test_a_bar_whose_last_update_was_not_logged_logs_the_final_count_at_close(caplog, monkeypatch):
    monkeypatch.setenv("COZ_PROGRESS_INTERVAL", "3600")
    caplog.set_level(logging.INFO)
    with progress_bar(2, "eval", logging.getLogger("coz_train.test_progress")) as bar:
        bar.update(2)
    assert [r.getMessage()[:11] for r in caplog.records] == ["eval:   0%|", "eval: 100%|"]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="DeepSpeed finds the GPU and says nothing")
def test_no_deepspeed_notice_without_a_deepspeed_config(monkeypatch):
    # accelerate imports DeepSpeed (when installed) in every save_pretrained / unwrap_model
    code = ("import coz_train.callbacks, torch; from accelerate.utils import extract_model_from_parallel; "
            "extract_model_from_parallel(torch.nn.Linear(1, 1))")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Setting accelerator to CPU" not in quiet.stdout + quiet.stderr
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # a DeepSpeed run keeps the line
    used = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "Setting accelerator to CPU" in used.stdout


def test_no_bitsandbytes_kernel_notice_when_peft_is_imported():
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    plain = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True, timeout=300)
    if "Failed to load CPU gemm_4bit_forward" not in plain.stdout + plain.stderr:
        pytest.skip("bitsandbytes says nothing here (no AVX512-BF16 CPU, or no kernels package)")
    ours = subprocess.run([sys.executable, "-c", "import coz_train, peft"], capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert "Failed to load CPU gemm_4bit_forward" not in ours.stdout + ours.stderr
