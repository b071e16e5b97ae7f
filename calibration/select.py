"""Choosing what to measure: cover the feature space, then add where the model is least certain.

Coverage (:func:`cover`): every candidate gets a *selection vector* (:func:`selection_vectors`):
log MACs, log bytes moved, log weight bytes, log bytes of the skip gathers, number of convolutions
and for dense-family specs the depth, log width and skip density (share of the possible long-range
channels used) of every cell; each column min-max normalized over the candidates. The extremes
(smallest and largest MACs) are taken first, then greedy farthest-point sampling (the k-center
heuristic) adds the candidate farthest from everything chosen so far.

Active step (:func:`most_uncertain`): refit the model on random 80% subsets of the measured
models, predict every candidate, and add the candidates whose predictions disagree most (relative
standard deviation across the fits), each pick discounting candidates near the ones already chosen
so the additions do not cluster.

Everything is deterministic from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import as_layer_tables, feature_matrix, feature_names
from nnflash.models.metrics import nn_density
from nnflash.models.spec import DenseSpec


def selection_vectors(specs: Sequence[Any]) -> np.ndarray:
    """Raw (unnormalized) selection vectors of ``specs`` (see the module docstring)."""
    names = feature_names()
    f = feature_matrix(specs)

    def col(n: str) -> np.ndarray:
        return f[:, names.index(n)]

    cols = [
        np.log1p(col("macs_total")),
        np.log1p(col("bytes_total")),
        np.log1p(col("bytes_weights")),
        np.log1p(col("bytes_gather")),
        col("ops_conv") + col("ops_pointwise") + col("ops_depthwise") + col("ops_linear"),
    ]
    if specs and all(isinstance(s, DenseSpec) for s in specs) and len({len(s.cells) for s in specs}) == 1:  # type: ignore[union-attr]
        for c in range(len(specs[0].cells)):  # type: ignore[union-attr]
            d = np.array([s.cells[c].depth for s in specs], float)  # type: ignore[union-attr]
            w = np.array([s.cells[c].width for s in specs], float)  # type: ignore[union-attr]
            t = np.array([s.cells[c].tc for s in specs], float)  # type: ignore[union-attr]
            cols += [d, np.log(w), nn_density(d.astype(np.int64), w.astype(np.int64), t.astype(np.int64))]
    return np.column_stack(cols)


def _normalize(v: np.ndarray) -> np.ndarray:
    lo, hi = v.min(0), v.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (v - lo) / span


def cover(candidates: Sequence[Any], n: int, *, seed: int = 0, already: Sequence[Any] = ()) -> list[int]:
    """Indices of ``n`` candidates that cover the selection space (extremes first, then
    farthest-point), avoiding the neighbourhood of ``already`` measured specs."""
    cands = list(candidates)
    if n < 1:
        raise CostModelError(f"budget: must be a positive integer, got {n}")
    if n > len(cands):
        raise CostModelError(f"budget: asked for {n} models but only {len(cands)} candidates")
    v = _normalize(selection_vectors(cands + list(already)))
    x, prior = v[: len(cands)], v[len(cands) :]
    chosen: list[int] = []
    dist = np.full(len(cands), np.inf)
    for p in prior:
        dist = np.minimum(dist, np.linalg.norm(x - p, axis=1))
    macs = x[:, 0]
    rng = np.random.default_rng(seed)
    # ties broken by a seeded jitter so equal candidates are picked reproducibly
    jitter = rng.random(len(cands)) * 1e-9
    starts = [int(np.argmin(macs + jitter)), int(np.argmax(macs + jitter))] if not len(prior) else []
    for i in starts[:n]:
        if i not in chosen:
            chosen.append(i)
            dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    while len(chosen) < n:
        d = np.where(np.isfinite(dist), dist, 1e9) + jitter
        d[chosen] = -1
        i = int(np.argmax(d))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return chosen


def bootstrap_predictions(
    make_model: Callable[[], Any],
    X: Sequence[Any],
    y: Any,
    candidates: Sequence[Any],
    *,
    n_boot: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """``(n_boot, len(candidates))`` predictions of models fitted on random subsets of the
    measured models (80% of them, drawn without replacement, at least the model's minimum)."""
    items = list(X)
    yy = np.asarray(y, float)
    n = len(items)
    min_n = getattr(make_model(), "min_samples", 3)
    if n < min_n:
        raise CostModelError(f"active selection: need at least {min_n} measured models, got {n}")
    size = min(n, max(min_n, int(np.ceil(0.8 * n))))
    if size == n and n > min_n:
        size = n - 1
    rng = np.random.default_rng(seed)
    # layer tables once, not once per fit: they are most of the cost for thousands of candidates
    tables, cand_tables = as_layer_tables(items), as_layer_tables(candidates)
    preds = []
    for _ in range(n_boot):
        idx = np.sort(rng.choice(n, size, replace=False))
        model = make_model().fit([tables[i] for i in idx], yy[idx])
        preds.append(model.predict(cand_tables))
    return np.array(preds)


def most_uncertain(
    make_model: Callable[[], Any],
    X: Sequence[Any],
    y: Any,
    candidates: Sequence[Any],
    n: int,
    *,
    n_boot: int = 8,
    seed: int = 0,
) -> list[int]:
    """Indices of ``n`` candidates where bootstrap fits of the model disagree most (relative
    standard deviation), spread out: each pick scales the scores of candidates by their normalized
    distance to the picks (and to the measured specs)."""
    cands = list(candidates)
    if n < 1 or n > len(cands):
        raise CostModelError(f"active selection: cannot pick {n} of {len(cands)} candidates")
    preds = bootstrap_predictions(make_model, X, y, cands, n_boot=n_boot, seed=seed)
    mean = np.maximum(np.abs(preds.mean(0)), 1e-12)
    score = preds.std(0) / mean
    v = _normalize(selection_vectors(cands + list(X)))
    x, measured = v[: len(cands)], v[len(cands) :]
    dist = np.full(len(cands), np.inf)
    for p in measured:
        dist = np.minimum(dist, np.linalg.norm(x - p, axis=1))
    scale = float(np.median(dist[np.isfinite(dist)])) if np.isfinite(dist).any() else 1.0
    chosen: list[int] = []
    for _ in range(n):
        s = score * (1 - np.exp(-dist / max(scale, 1e-12)))
        s[chosen] = -np.inf
        i = int(np.argmax(s))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return chosen


def plan_budget(budget: int, active_share: float = 0.4, rounds: int = 2) -> list[int]:
    """How a budget of ``budget`` models is spent: ``[coverage, active round 1, ...]``."""
    if budget < 1:
        raise CostModelError(f"budget: must be a positive integer, got {budget}")
    n_active = int(round(budget * active_share)) if budget >= 8 else 0
    first = budget - n_active
    steps = [first]
    for r in range(rounds):
        k = n_active // rounds + (1 if r < n_active % rounds else 0)
        if k:
            steps.append(k)
    return steps


def select_specs(
    candidates: Sequence[Any],
    budget: int,
    *,
    seed: int = 0,
    measure: Callable[[list[Any]], Sequence[float]] | None = None,
    make_model: Callable[[], Any] | None = None,
    active_share: float = 0.4,
    rounds: int = 2,
) -> tuple[list[Any], list[float]]:
    """The whole selection loop: cover, measure, then active rounds (fit, pick the most uncertain,
    measure). ``measure(specs) -> latencies`` is called once per round. Without ``measure``, only
    the coverage step runs and the latency list is empty."""
    cands = list(candidates)
    steps = plan_budget(budget, active_share, rounds) if measure is not None else [budget]
    first = [cands[i] for i in cover(cands, steps[0], seed=seed)]
    if measure is None:
        return first, []
    chosen = first
    y = list(measure(first))
    if make_model is None:
        from nnflash.calibration.roofline import RooflineLatencyModel

        make_model = RooflineLatencyModel
    for r, k in enumerate(steps[1:]):
        ids = {id(s) for s in chosen}
        rest = [s for s in cands if id(s) not in ids]
        pick = most_uncertain(make_model, chosen, y, rest, k, seed=seed + 1 + r)
        new = [rest[i] for i in pick]
        y += list(measure(new))
        chosen = chosen + new
    return chosen, y
