"""Which networks to train: spread the choice over NN-Degree and size, not random draws.

Every candidate gets a selection vector -- log NN-Degree, log(1 + NN-Mass), log params, log MACs --
each column min-max normalized over the candidates. The networks of lowest and highest NN-Degree are
taken first, then greedy farthest-point sampling (the k-center heuristic of
:func:`nnflash.calibration.select.cover`, on these accuracy-oriented columns instead of the
latency-oriented ones) adds the candidate farthest from everything chosen so far. So 25 trainings
cover the range of the predictors' features, which is what a curve fitted from 25 points needs.
Deterministic from ``seed`` (a 1e-9 jitter breaks ties).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nnflash.calibration.accuracy.base import AccuracyModelError, as_specs, spec_features


def selection_vectors(specs: Sequence[Any]) -> np.ndarray:
    """Raw (unnormalized) selection vectors of ``specs`` (see the module docstring)."""
    f = spec_features(as_specs(specs))
    degree = np.where(np.isfinite(f["nn_degree"]), f["nn_degree"], f["params"])
    return np.column_stack(
        [
            np.log(np.maximum(degree, 1e-12)),
            np.log1p(f["nn_mass"]),
            np.log(f["params"]),
            np.log(np.maximum(f["macs"], 1)),
        ]
    )


def select_for_training(candidates: Sequence[Any], budget: int, *, seed: int = 0) -> list[int]:
    """Indices of ``budget`` candidates spread over NN-Degree and size (module docstring)."""
    cands = list(candidates)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise AccuracyModelError(f"budget: must be a positive integer, got {budget!r}")
    if budget > len(cands):
        raise AccuracyModelError(f"budget: asked for {budget} networks but the pool has only {len(cands)}")
    v = selection_vectors(cands)
    lo, hi = v.min(0), v.max(0)
    x = (v - lo) / np.where(hi > lo, hi - lo, 1.0)
    jitter = np.random.default_rng(seed).random(len(cands)) * 1e-9
    chosen: list[int] = []
    dist = np.full(len(cands), np.inf)
    for i in (int(np.argmin(x[:, 0] + jitter)), int(np.argmax(x[:, 0] + jitter))):
        if len(chosen) < budget and i not in chosen:
            chosen.append(i)
            dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    while len(chosen) < budget:
        d = np.where(np.isfinite(dist), dist, 1e9) + jitter
        d[chosen] = -1
        i = int(np.argmax(d))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return chosen
