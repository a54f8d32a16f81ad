"""The phase registry: every selectable phase has a runner, and the default selection is all of them."""

from __future__ import annotations

from coz_train.bench import phases as ph
from coz_train.config import BenchConfig


def test_every_phase_is_run_by_its_own_function_or_the_policy_registry():
    assert set(ph.PHASES) == {"preprocess", "critic", *ph.POLICY_PHASES}
    assert len(ph.PHASES) == len(set(ph.PHASES))
    assert all(callable(fn) for fn in ph.POLICY_PHASES.values())


def test_the_default_selection_is_every_phase_in_order():
    assert BenchConfig().phases == list(ph.PHASES)
