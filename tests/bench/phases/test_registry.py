"""The phase registry: every selectable phase has a runner, and which ones a run selects by default."""

from __future__ import annotations

from coz_train.bench import phases as ph
from coz_train.config import BenchConfig


def test_every_phase_is_run_by_its_own_function_or_the_policy_registry():
    assert set(ph.PHASES) == {"preprocess", "critic", *ph.POLICY_PHASES}
    assert len(ph.PHASES) == len(set(ph.PHASES))
    assert all(callable(fn) for fn in ph.POLICY_PHASES.values())


def test_the_default_selection_is_every_phase_in_order_but_none_at_the_real_size_on_a_cpu():
    import torch
    from omegaconf import OmegaConf

    from coz_train.bench.run import wanted_phases

    bench = OmegaConf.structured(BenchConfig())
    assert bench.phases is None and wanted_phases(bench, torch.device("cpu")) == list(ph.PHASES)
    bench.size = "real"
    assert wanted_phases(bench, torch.device("cpu")) == [] and wanted_phases(bench, torch.device("cuda", 0)) == list(ph.PHASES)
    bench.phases = ["train", "preprocess"]
    assert wanted_phases(bench, torch.device("cpu")) == ["preprocess", "train"]  # given: run, in a step's order
