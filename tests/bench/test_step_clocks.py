"""The StepTimer's two clocks (wall, process CPU time) and its garbage-collector record, driven by hand."""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace

import pytest

from coz_train.bench.step_timer import StepTimer, summary


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def step(timer: StepTimer, number: int, collect: bool = False) -> None:
    timer.enter("data")
    busy(0.02)
    time.sleep(0.05)  # waiting: wall time, no CPU time
    timer.exit()
    timer.enter("rewards")
    busy(0.01)
    timer._model_enter()
    busy(0.03)  # the critic's model
    timer._model_exit("critic")
    if collect:
        gc.collect()
    timer.exit()
    timer.on_step_end(None, SimpleNamespace(global_step=number), None)


def test_cpu_time_counts_work_not_waiting_and_the_collector_apart():
    timer = StepTimer()
    gc.callbacks.append(timer._on_gc)
    try:
        timer.on_train_begin(None, None, None)
        step(timer, 1)
        step(timer, 2, collect=True)
    finally:
        gc.callbacks.remove(timer._on_gc)
    first, second = timer.steps
    for record in timer.steps:
        assert record["cpu_phases"]["data"] >= 0.07 > record["cpu_process_phases"]["data"] >= 0.02
        assert record["cpu_process_s"] == pytest.approx(record["cpu_time_s"] - record["critic_model_s"], abs=0.01)
        assert record["cpu_s"] >= record["cpu_process_s"] and record["cpu_time_s"] >= 0.06
    assert first["cpu_process_phases"]["rewards"] == pytest.approx(0.01, abs=0.008)
    assert second["cpu_process_phases"]["rewards"] >= 0.01  # and the collection that ran inside it
    assert first["gc_full"] == 0 and second["gc_full"] == 1 and second["gc_s"] > 0 and second["gc_collections"] >= 1
    out = summary(timer.steps, warmup=0)
    assert out["gc_full"] == 1 and out["gc_mean_s"] == pytest.approx(second["gc_s"] / 2 + first["gc_s"] / 2)
    assert set(out["cpu_process_phases"]) == set(first["cpu_process_phases"]) and out["cpu_process_s"] > 0
