"""The search of the ``nb201`` space: exact enumeration.

NAS-Bench-201's space is finite and small (5^6 = 15,625 cells, :class:`nnflash.models.space.Nb201Space`),
and none of its costs is a sum over independent cells the way the dense family's are (one cell is
repeated fifteen times, and its edges interact through which of them are live), so the search
predicts every member and ranks them:

1. **Tables** (:meth:`Nb201Tables.build`, once): the layer table of every network
   (``models.metrics.layer_table``), its parameter and MAC counts (their sums, as
   ``compute_metrics`` counts them), its latency (and energy) from each deployment's full cost
   model (``CostModel.predict`` on the layer table, the same features it computes from the spec)
   and its objective. The layer table, and so every cost, is a function of the *effective* cell
   (dead edges left out, ``models.nb201``): the 15,625 strings make 9,445 effective cells, and each
   is computed once, for the first member of its group, and shared by the others.
2. **Ranking** (:func:`nb201_candidates`): every (network, deployment) pair whose costs meet the
   limits (latency and energy ``margin`` inside theirs), best objective first; ties go to the lower
   predicted latency, then to the space's enumeration order.
3. **Re-check**: :func:`nnflash.search.search` passes the ranked pairs through ``recheck`` (the cost
   model's ``predict`` on the spec itself) and keeps the first ``top_k`` that pass.

The Pareto front (:func:`nb201_front`) is the exact staircase over the same tables. Peak activation
memory has no model for these networks (``search.memory`` models the dense family), so a
``max_peak_memory_mb`` limit is refused and a design's ``peak_memory_mb`` is ``None``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from nnflash.models.metrics import layer_table, nb201_topology
from nnflash.models.nb201 import Nb201Spec
from nnflash.models.space import Nb201Space
from nnflash.search.infeasible import infeasible_error
from nnflash.search.types import Deployment, Infeasible, Limits, Objective, SearchError

#: The costs a limit can name, by the limit's field; the rest (peak memory, area) have no nb201 model.
COSTS: dict[str, str] = {
    "max_latency_ms": "latency_ms",
    "max_energy_mj": "energy_mj",
    "max_params": "params",
    "max_macs": "macs",
}


def effective_key(spec: Nb201Spec) -> tuple[object, ...]:
    """What an nb201 network's layer table depends on: its effective cell and its skeleton."""
    return (spec.graph.live_ops(), spec.channels, spec.cells_per_stage, spec.input_shape, spec.num_classes)


def objective_values(objective: Objective, specs: Sequence[Nb201Spec]) -> np.ndarray:
    """The objective of every spec: precomputed scores (by spec id), a monotone predictor's curve
    of NN-Degree or NN-Mass, or the metric itself (``models.metrics.nb201_topology``)."""
    if objective.scores is not None:
        missing = [s.spec_id for s in specs if s.spec_id not in objective.scores]
        if missing:
            raise SearchError(
                f"objective {objective.name}: no score for {len(missing)} of the {len(specs)} candidates "
                f"(first: spec {missing[0]}); give one for every network searched"
            )
        return np.array([float(objective.scores[s.spec_id]) for s in specs])
    metric = np.array([nb201_topology(s)[objective.metric] for s in specs], dtype=np.float64)
    return objective.value(metric)


@dataclass(frozen=True)
class Nb201Tables:
    """Every candidate's predicted costs and objective (module docstring, step 1)."""

    space: Nb201Space
    objective: Objective
    deployments: tuple[Deployment, ...]
    specs: tuple[Nb201Spec, ...]
    #: ``(n,)`` objective values (the predictor's accuracy, or the metric).
    value: np.ndarray
    params: np.ndarray
    macs: np.ndarray
    #: ``(deployments, n)`` predicted latency; energy likewise, NaN for a deployment without an energy model.
    latency_ms: np.ndarray
    energy_mj: np.ndarray
    #: Seconds the build took.
    build_s: float = 0.0

    @classmethod
    def build(
        cls,
        space: Nb201Space,
        deployments: Sequence[Deployment],
        objective: Objective,
        specs: Optional[Sequence[Nb201Spec]] = None,
    ) -> Nb201Tables:
        """Tables over ``specs`` (default: every member of ``space``, :meth:`Nb201Space.all_specs`).
        A subset searches only those networks (the networks one can afford to train, say)."""
        import time

        t0 = time.perf_counter()
        cands = list(space.all_specs() if specs is None else specs)
        if not cands:
            raise SearchError("search: no candidate networks to search")
        for s in cands:
            if not isinstance(s, Nb201Spec):
                raise SearchError(f"search: candidates of space nb201 must be nb201 specs, got {type(s).__name__}")
        groups: dict[tuple[object, ...], int] = {}
        member = np.empty(len(cands), dtype=np.int64)
        reps: list[Nb201Spec] = []
        for i, s in enumerate(cands):
            g = groups.setdefault(effective_key(s), len(reps))
            if g == len(reps):
                reps.append(s)
            member[i] = g
        tables = [layer_table(s) for s in reps]
        params = np.array([sum(x.params for x in t) for t in tables], dtype=np.float64)
        macs = np.array([sum(x.macs for x in t) for t in tables], dtype=np.float64)
        lat = np.empty((len(deployments), len(reps)))
        energy = np.full((len(deployments), len(reps)), np.nan)
        for k, dep in enumerate(deployments):
            lat[k] = dep.latency_model.predict(tables)
            if dep.energy_model is not None:
                energy[k] = dep.energy_model.predict(tables)
        value = objective_values(objective, cands)
        return cls(
            space=space,
            objective=objective,
            deployments=tuple(deployments),
            specs=tuple(cands),
            value=value,
            params=params[member],
            macs=macs[member],
            latency_ms=lat[:, member],
            energy_mj=energy[:, member],
            build_s=time.perf_counter() - t0,
        )

    def with_objective(self, objective: Objective) -> Nb201Tables:
        """The same candidates and predicted costs with another objective (nothing re-predicted)."""
        return dataclasses.replace(self, objective=objective, value=objective_values(objective, self.specs))

    def cost(self, name: str) -> np.ndarray:
        """``(deployments, n)`` values of the cost ``name`` (``latency_ms``, ``energy_mj``, ``params``, ``macs``)."""
        if name == "latency_ms":
            return self.latency_ms
        if name == "energy_mj":
            return self.energy_mj
        row = self.params if name == "params" else self.macs
        return np.broadcast_to(row, self.latency_ms.shape)

    def feasible(self, limits: Limits, margin: float) -> np.ndarray:
        """``(deployments, n)`` mask of the pairs that meet ``limits`` (cost limits ``margin`` inside)."""
        ok = np.ones(self.latency_ms.shape, dtype=bool)
        for name, bound in limits.effective(margin).items():
            if name not in COSTS:
                raise SearchError(f"{name}: space nb201 has no model of this cost (limits: {', '.join(COSTS)})")
            with np.errstate(invalid="ignore"):
                ok &= self.cost(COSTS[name]) <= bound
        return ok


def check_limits(limits: Limits) -> None:
    """Refuse the limits that have no model on nb201 networks."""
    for name in limits.given():
        if name == "max_peak_memory_mb":
            raise SearchError(
                "max_peak_memory_mb: nnflash has no peak-memory model of nb201 networks (only of the dense "
                "family); limit latency, params or MACs instead"
            )
        if name not in COSTS:
            raise SearchError(f"{name}: space nb201 has no model of this cost (limits: {', '.join(COSTS)})")


def _order(tables: Nb201Tables, dep_idx: np.ndarray, spec_idx: np.ndarray) -> np.ndarray:
    """Best objective first, then the lower predicted latency, then enumeration order."""
    lat = tables.latency_ms[dep_idx, spec_idx]
    return np.lexsort((dep_idx, spec_idx, lat, -tables.value[spec_idx]))


def nb201_candidates(
    tables: Nb201Tables, limits: Limits, margin: float
) -> tuple[list[tuple[Nb201Spec, Deployment]], int]:
    """Every feasible (spec, deployment) pair, best first, and the number of pairs evaluated."""
    dep_idx, spec_idx = np.nonzero(tables.feasible(limits, margin))
    order = _order(tables, dep_idx, spec_idx)
    pairs = [(tables.specs[int(spec_idx[o])], tables.deployments[int(dep_idx[o])]) for o in order]
    return pairs, int(tables.latency_ms.size)


def nb201_front(tables: Nb201Tables, against: str, limits: Limits) -> list[tuple[Nb201Spec, Deployment]]:
    """The exact front of the objective against ``latency`` or ``energy`` among the pairs meeting
    ``limits`` (no margin): each pair on it has a better objective than every pair at most as
    costly; ties of cost go to the better objective, sorted by cost."""
    cost = tables.latency_ms if against == "latency" else tables.energy_mj
    dep_idx, spec_idx = np.nonzero(tables.feasible(limits, 0.0) & np.isfinite(cost))
    c = cost[dep_idx, spec_idx]
    v = tables.value[spec_idx]
    order = np.lexsort((dep_idx, spec_idx, -v, c))
    out: list[tuple[Nb201Spec, Deployment]] = []
    best = -math.inf
    for o in order:
        if v[o] > best:
            best = float(v[o])
            out.append((tables.specs[int(spec_idx[o])], tables.deployments[int(dep_idx[o])]))
    return out


def diagnose(tables: Nb201Tables, limits: Limits, margin: float, method: str) -> Infeasible:
    """The :class:`Infeasible` error: for each limit, the tightest value the candidates reach while
    the other limits hold (at the same margin)."""
    given = limits.given()
    reachable: dict[str, Optional[float]] = {}
    for name in given:
        others = Limits(**{k: v for k, v in given.items() if k != name})
        vals = tables.cost(COSTS[name])[tables.feasible(others, margin)]
        vals = vals[np.isfinite(vals)]
        reachable[name] = float(vals.min()) if len(vals) else None
    return infeasible_error(tables.space.name, given, reachable, margin, method)
