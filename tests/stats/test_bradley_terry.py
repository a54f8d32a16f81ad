"""The Bradley-Terry fit: finite when a condition never wins, batched, and the same as choix."""

from __future__ import annotations

import numpy as np
import pytest

from coz_train.stats.bradley_terry import fit_bradley_terry


def test_a_condition_that_never_wins_stays_finite() -> None:
    wins = np.array([[0, 10, 8], [0, 0, 6], [0, 3, 0]], dtype=float)  # condition 0 wins every comparison
    scores = fit_bradley_terry(wins)
    assert np.all(np.isfinite(scores)) and scores[0] > scores[2] > scores[1] - 5
    batch = fit_bradley_terry(np.stack([wins, wins.T]))  # [2, C, C] at once
    assert batch[0] == pytest.approx(scores) and batch[1] == pytest.approx(-scores, abs=1e-6)


def test_fit_agrees_with_choix() -> None:
    choix = pytest.importorskip("choix")
    wins = np.random.default_rng(2).poisson(15, size=(5, 5)).astype(float)
    np.fill_diagonal(wins, 0)
    ours = fit_bradley_terry(wins)
    theirs = choix.ilsr_pairwise_dense(wins)
    assert ours == pytest.approx(theirs - theirs.mean(), abs=1e-4)
