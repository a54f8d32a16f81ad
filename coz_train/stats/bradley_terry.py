"""Bradley-Terry scores from (fractional) win counts, fitted for many win matrices at once.

Model: P(i preferred to j) = 1 / (1 + exp(theta_j - theta_i)), theta the log-strength of a condition,
reported centred (mean 0; a difference of 1 means odds of e:1). A tie counts as half a win to each side.

The fit is a Newton maximisation of the log-likelihood with a small ridge penalty (RIDGE/2 sum theta^2,
a weak N(0, 1/RIDGE) prior) that keeps the scores finite when a condition wins or loses every
comparison (of a bootstrap replicate, say), and that centres them (the likelihood gradient sums to zero,
so the penalised optimum has sum theta = 0). It is written here rather than taken from `choix` (MIT),
whose fits handle one comparison matrix per call (~5 ms each with ilsr_pairwise_dense): a bootstrap
needs n_boot fits, and this Newton step runs on all replicates at once ([B, C, C] arrays), 2000
replicates in well under a second. The tests check it against choix where choix is installed.
"""

from __future__ import annotations

import numpy as np

RIDGE = 1e-3
MAX_STEP = 2.0   # Newton steps are clipped to this (per score) far from the optimum
TOL = 1e-9
MAX_ITER = 200


def fit_bradley_terry(wins: np.ndarray) -> np.ndarray:
    """Scores from win counts: wins[..., i, j] = (fractional) wins of i over j. Returns [..., C] centred scores."""
    wins = np.asarray(wins, dtype=float)
    batch, c = wins.shape[:-2], wins.shape[-1]
    w = wins.reshape(-1, c, c)                               # [B, C, C]
    n = w + w.transpose(0, 2, 1)                             # comparisons per pair
    won = w.sum(axis=2)                                      # [B, C]
    theta = np.zeros(w.shape[:2])
    eye = np.eye(c)
    for _ in range(MAX_ITER):
        p = 1.0 / (1.0 + np.exp(theta[:, None, :] - theta[:, :, None]))  # [B, C, C]: P(i beats j)
        grad = won - (n * p).sum(axis=2) - RIDGE * theta
        curvature = n * p * (1 - p)                                        # [B, C, C]
        hessian = curvature - eye * curvature.sum(axis=2)[:, :, None] - RIDGE * eye  # negative definite
        step = -np.linalg.solve(hessian, grad[..., None])[..., 0]
        step = np.clip(step, -MAX_STEP, MAX_STEP)
        theta = theta + step
        if np.max(np.abs(step), initial=0.0) < TOL:
            break
    theta = theta - theta.mean(axis=1, keepdims=True)
    return theta.reshape(*batch, c)
