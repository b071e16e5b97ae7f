"""The exact optimizer: the constrained optimum over the whole space.

Every limited cost is a sum over cells (latency, energy, params, MACs) or a maximum over them (peak
memory), once each cell knows the **coupling state** entering it: the width, and for onnxruntime's
simulated graph the NCHWc layout, of the tensor the previous cell leaves
(:mod:`nnflash.search.evaluator`). The objective (NN-Degree, NN-Mass; a monotone predictor of
either) is a sum over cells too. So the space is a chain of cells joined by a few states (up to 12
for ``flash``: 6 widths x 2 layouts), and dynamic programming over the chain is exact:

1. **Tables** (:meth:`ExactTables.build`, once): every distinct configuration of every cell,
   evaluated under every state that can enter it: latency, energy, params, MACs, peak memory and
   the state it leaves; the head's costs folded into the last cell's by its output state, the
   model's constant into the first cell. With them, the **completion staircases**
   (:func:`completions`): for each additive cost alone, the best objective that cells ``c..``
   reach from each entering state within any amount of that cost (the one-limit program run
   backwards from the last cell).
2. **Per-cell fronts**: the configurations of a cell that share the entering and the leaving state
   are interchangeable in every network, so only the non-dominated ones (objective up, every
   *limited* cost down) can be part of an optimum; keeping ``K`` non-dominated layers keeps the
   exact top ``K``.
3. **Merge along the chain**: the prefix front of cells ``0..c-1`` leaving state ``s`` is combined
   with cell ``c``'s fronts entered by ``s`` (sums of objective and costs), pruned by the bound
   below and reduced again to non-dominated layers per leaving state (:mod:`nnflash.search.pareto`:
   exact sweeps, ``O(n log n)`` with one or two limited costs). The last cell is a branch and
   bound: its configurations are combined with the prefixes in decreasing order of their bound
   until the next bound falls below the ``K``-th best design found.

**The bound, and why pruning by it is exact.** A prefix with objective ``o`` and costs ``p``,
leaving state ``s``, completes to a design of objective at most ``o + min_j after_j(s, B_j - p_j)``,
where ``after_j`` is the completion staircase of cost ``j`` and ``B_j`` its budget: any completion
that meets every limit meets limit ``j`` alone, and ``after_j`` is the best objective of those.
(It is ``-inf``, and the prefix is infeasible, when some limit alone cannot be met.) The staircases
are built without a peak-memory limit: under one they are still upper bounds, only looser. Before
the exact pass, a **beam search** follows the ``_BEAM`` prefixes of highest bound through the chain
and completes them by the same branch and bound; the ``K``-th best of the feasible designs it finds
is the **incumbent** ``L``, a lower bound on the ``K``-th best design of the space. The exact pass
then drops every prefix and configuration whose bound is below ``L``: every design through it is
below ``L``, so not among the ``K`` best (ties at ``L`` are kept). Dropping by dominance as well is
safe: a dropped prefix has ``K`` dominators of the same state, each with a bound at least as high,
which complete the same way to designs at least as good. Without an incumbent (the beam found fewer
than ``K`` designs) only infeasible prefixes are dropped, and the pass is the plain program. Sums
taken in another order than the design's own are allowed a relative ``_TOL`` on the generous side.

Back-pointers rebuild each design's configuration. Peak memory is a filter on (configuration,
entering state) pairs. Co-design runs the chain per deployment and ranks the union. The result is
checked against brute-force enumeration in ``tests/unit/test_search_exact.py`` under every kind of
limit and up to five at once, for the top 1, 3 and 7, with a beam of one prefix too (a poor
incumbent), and the bound against the best completion of every prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from nnflash.models.metrics import nn_degree, nn_mass
from nnflash.models.space import Space
from nnflash.models.spec import DenseSpec
from nnflash.search.evaluator import CellEvaluator
from nnflash.search.pareto import front_layers, nondominated
from nnflash.search.types import Deployment, Design, Limits, Objective

#: Additive costs, by the name of their limit.
ADDITIVE: dict[str, str] = {
    "max_latency_ms": "latency_ms",
    "max_energy_mj": "energy_mj",
    "max_params": "params",
    "max_macs": "macs",
}
#: Relative slack taken off each budget inside the chain, so that a design the per-cell sums put
#: exactly on a limit is not lost to the full model's different order of float additions.
_ROUNDING = 1e-9


def cell_configs(space: Space, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct configuration ``(depth, width, tc)`` of cell ``c``."""
    d, w, n_tc = space.cells[c].grid()
    rep = n_tc.astype(np.int64)
    dd, ww = np.repeat(d, rep), np.repeat(w, rep)
    start = np.repeat(np.cumsum(rep) - rep, rep)
    tt = np.arange(int(rep.sum())) - start
    return dd, ww, tt


#: Width of the beam that finds the incumbent (see :func:`run_chain`).
_BEAM = 32
#: Relative tolerance of the bound tests: a bound is compared with the incumbent, and a remaining
#: budget looked up, this much on the generous side, so that sums taken in another order than the
#: design's own never drop a design the exact sums keep.
_TOL = 1e-9

Stair = tuple[np.ndarray, np.ndarray]


def _stair(obj: np.ndarray, cost: np.ndarray) -> Stair:
    """The 1-D front of ``(obj, cost)`` as a staircase: cost ascending, objective strictly
    increasing (points of equal cost may remain, the best last); the best objective within a cost
    ``r`` is the objective at the last cost ``<= r``."""
    order = np.argsort(cost)
    c, o = cost[order], obj[order]
    before = np.concatenate([[-np.inf], np.maximum.accumulate(o)[:-1]])
    keep = o > before
    return c[keep], o[keep]


def _lookup(stair: Stair, r: np.ndarray) -> np.ndarray:
    """The best objective of ``stair`` within each cost of ``r`` (``-inf`` where none fits)."""
    sc, sb = stair
    pos = np.searchsorted(sc, r, side="right") - 1
    return np.where(pos >= 0, sb[np.maximum(pos, 0)], -np.inf)


def completions(
    cells: list[CellTable], terms: list[np.ndarray], dim: str, ok: list[np.ndarray], cap: float
) -> list[list[Stair]]:
    """``after[c][s]``: the best objective that cells ``c..`` reach, entered by state ``s``, within
    each cost of ``dim`` alone (``""``: no cost, one point at cost 0): the one-limit dynamic program
    run backwards, as staircases; ``c = C`` is the end (objective 0 at cost 0). Only configurations
    of ``ok`` count; costs above ``cap`` are dropped."""
    C = len(cells)
    n_end = int(cells[-1].out_state.max()) + 1
    after: list[list[Stair]] = [[] for _ in range(C + 1)]
    after[C] = [(np.zeros(1), np.zeros(1)) for _ in range(n_end)]
    for c in range(C - 1, 0, -1):
        ct = cells[c]
        for si in range(len(ct.in_states)):
            cand = np.flatnonzero(ok[c][si])
            t = terms[c]
            f = (t[si] if t.ndim == 2 else t)[cand]
            g = ct.costs[dim][si, cand] if dim else np.zeros(len(cand))
            out = ct.out_state[cand]
            os_, cs_ = [np.zeros(0)], [np.zeros(0)]
            for u in np.unique(out):
                sel = out == u
                xc, xo = _stair(f[sel], g[sel])
                sc, sb = after[c + 1][u]
                tot_c = (xc[:, None] + sc[None, :]).ravel()
                tot_o = (xo[:, None] + sb[None, :]).ravel()
                fit = tot_c <= cap
                os_.append(tot_o[fit])
                cs_.append(tot_c[fit])
            after[c].append(_stair(np.concatenate(os_), np.concatenate(cs_)))
    return after


@dataclass
class CellTable:
    """One cell's configurations under each entering state (arrays ``[state, config]``)."""

    d: np.ndarray
    w: np.ndarray
    t: np.ndarray
    in_states: list[tuple[int, bool]]
    out_state: np.ndarray  # index into the next cell's in_states (or the head's states)
    costs: dict[str, np.ndarray]  # latency_ms, energy_mj, params, macs, peak_memory_mb: [state, config]
    metric: dict[str, np.ndarray]  # nn_degree, nn_mass: [config]


@dataclass
class DeploymentTable:
    deployment: Deployment
    cells: list[CellTable]
    #: the completion staircases (:func:`completions`) of the tables' objective with no peak-memory
    #: limit, by additive cost ("" for none): built once with the tables, read by every search
    completions: dict[str, list[list[Stair]]] = field(default_factory=dict)


@dataclass
class ExactTables:
    """Per-cell tables of a space for every deployment (see the module docstring)."""

    space: Space
    objective: Objective
    tables: list[DeploymentTable]
    build_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, space: Space, deployments: list[Deployment], objective: Objective) -> ExactTables:
        import time

        t0 = time.perf_counter()
        tables = [_build_one(space, dep) for dep in deployments]
        for table in tables:
            terms = _objective_terms(table, objective)
            ok = [np.ones(ct.costs["latency_ms"].shape, dtype=bool) for ct in table.cells]
            for dim in [""] + [d for d in ADDITIVE.values() if d in table.cells[0].costs]:
                table.completions[dim] = completions(table.cells, terms, dim, ok, np.inf)
        return cls(space, objective, tables, build_s=time.perf_counter() - t0)


def _build_one(space: Space, dep: Deployment) -> DeploymentTable:
    ev = CellEvaluator(space, dep.latency_model, dep.energy_model)
    names = ["latency_ms", "params", "macs", "peak_memory_mb"] + (["energy_mj"] if dep.energy_model else [])
    cells: list[CellTable] = []
    in_states: list[tuple[int, bool]] = [(space.input_shape[0], False)]
    for c in range(len(space.cells)):
        d, w, t = cell_configs(space, c)
        n = len(d)
        costs = {k: np.zeros((len(in_states), n)) for k in names}
        out_w = w
        out_b = ev.out_blocked(d, w, t)
        for si, (cin, blk) in enumerate(in_states):
            cc = ev.cell(c, d, w, t, np.full(n, cin), np.full(n, blk))
            for k in names:
                costs[k][si] = getattr(cc, k)
        keys = sorted(set(zip(out_w.tolist(), out_b.tolist())))
        index = {k: i for i, k in enumerate(keys)}
        out_state = np.array([index[k] for k in zip(out_w.tolist(), out_b.tolist())], dtype=np.int64)
        dd, ww, tt = d[:, None], w[:, None], t[:, None]

        metric = {"nn_degree": nn_degree(dd, ww, tt), "nn_mass": nn_mass(dd, ww, tt)}
        cells.append(CellTable(d, w, t, in_states, out_state, costs, metric))
        in_states = keys
    # the head, by the last cell's output state, folded into the last cell
    hw = np.array([s[0] for s in in_states])
    hb = np.array([s[1] for s in in_states])
    head = ev.head(hw, hb)
    last = cells[-1]
    for k in names:
        hv = getattr(head, k)[last.out_state]
        if k == "peak_memory_mb":
            last.costs[k] = np.maximum(last.costs[k], hv[None, :])
        else:
            last.costs[k] = last.costs[k] + hv[None, :]
    first = cells[0]
    first.costs["latency_ms"] = first.costs["latency_ms"] + ev.constant
    if "energy_mj" in first.costs:
        first.costs["energy_mj"] = first.costs["energy_mj"] + ev.constant_energy
    return DeploymentTable(dep, cells)


# ---------------------------------------------------------------------------------- the chain


@dataclass
class _Level:
    obj: np.ndarray
    cost: np.ndarray  # (n, k)
    state: np.ndarray
    parent: np.ndarray
    cfg: np.ndarray


def _objective_terms(table: DeploymentTable, objective: Objective) -> list[np.ndarray]:
    return [objective.direction * ct.metric[objective.metric] for ct in table.cells]


class _Chain:
    """One chain's data: the per-cell feasibility (peak memory), objective terms, limited costs and
    the **completion staircases** (:func:`completions`): for every cell ``c`` and state ``s``
    entering it, and every limited cost ``j`` alone, the best objective that cells ``c..`` reach
    within a cost ``r`` of ``j``. A prefix of state ``s`` with objective ``o`` and costs ``p`` can
    complete to at most ``o + min_j after_j(B_j - p_j)``: every complete design meets each limit
    alone. The bound is ``-inf`` when some limit alone cannot be met. ``stock``: staircases built
    with the tables, used when they apply (the same objective terms, no peak-memory limit)."""

    def __init__(
        self,
        table: DeploymentTable,
        obj_terms: list[np.ndarray],
        dims: list[str],
        budgets: dict[str, float],
        peak_limit: Optional[float],
        stock: Optional[dict[str, list[list[Stair]]]] = None,
    ) -> None:
        self.cells = table.cells
        self.terms = obj_terms
        self.dims = dims
        self.k = k = len(dims)
        self.bud = np.array([budgets[d] * (1 + _ROUNDING) for d in dims]) if k else np.zeros(0)
        self.slack = np.where(np.isfinite(self.bud), np.abs(self.bud) * _TOL, 0.0)
        self.ok = []
        for ct in self.cells:
            m = np.ones_like(ct.costs["latency_ms"], dtype=bool)
            if peak_limit is not None:
                m &= ct.costs["peak_memory_mb"] <= peak_limit * (1 + _ROUNDING)
            self.ok.append(m)
        per_dim = []
        for j, dim in enumerate(dims or [""]):
            if stock is not None and dim in stock:
                per_dim.append(stock[dim])
            else:
                cap = float(self.bud[j] + self.slack[j]) if k else np.inf
                per_dim.append(completions(self.cells, obj_terms, dim, self.ok, cap))
        #: after[c][s][j]
        self.after = [
            [[per_dim[j][c][s] for j in range(len(per_dim))] for s in range(len(per_dim[0][c]))]
            for c in range(len(self.cells) + 1)
        ]
        #: cheapest[c][s, j]: the least cost ``j`` of any completion by cells ``c..`` entered by ``s``
        self.cheapest = [
            np.array([[st[0][0] if len(st[0]) else np.inf for st in per_state] for per_state in level])
            for level in self.after
        ]

    def term(self, c: int, si: int, cand: np.ndarray) -> np.ndarray:
        t = self.terms[c]
        return (t[si] if t.ndim == 2 else t)[cand]

    def cost(self, c: int, si: int, cand: np.ndarray) -> np.ndarray:
        ct = self.cells[c]
        if not self.k:
            return np.zeros((len(cand), 0))
        return np.stack([ct.costs[dn][si, cand] for dn in self.dims], axis=1)

    def feasible(self, c: int, cost: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Whether prefixes of cells ``0..c-1`` (costs ``cost``, leaving ``state``) can meet each
        limit alone: :meth:`bound` finite, by the cheapest completion of each cost."""
        if not self.k:
            return np.ones(len(cost), dtype=bool)
        return np.all(cost + self.cheapest[c][state] <= self.bud + self.slack, axis=1)

    def bound(self, c: int, obj: np.ndarray, cost: np.ndarray, state: np.ndarray) -> np.ndarray:
        """An upper bound on every complete design that continues prefixes of cells ``0..c-1``
        (objective ``obj``, costs ``cost``, leaving ``state``) with cells ``c..``."""
        out = np.full(len(obj), -np.inf)
        rem = (self.bud + self.slack - cost) if self.k else np.zeros((len(obj), 1))
        for u in np.unique(state):
            sel = np.flatnonzero(state == u)
            stairs = self.after[c][int(u)]
            best = np.full(len(sel), np.inf)
            for j, st in enumerate(stairs):
                best = np.minimum(best, _lookup(st, rem[sel, j]))
            out[sel] = obj[sel] + best
        return out


def _floor_ok(bound: np.ndarray, floor: float) -> np.ndarray:
    """Bounds that may still reach ``floor`` (finite, and at least ``floor`` up to the tolerance)."""
    ok = np.isfinite(bound)
    if np.isfinite(floor):
        ok &= bound >= floor - _TOL * max(1.0, abs(floor))
    return ok


def run_chain(
    table: DeploymentTable,
    obj_terms: list[np.ndarray],
    dims: list[str],
    budgets: dict[str, float],
    peak_limit: Optional[float],
    layers: int,
    final: str = "top",
    stock: Optional[dict[str, list[list[Stair]]]] = None,
) -> tuple[list[_Level], int]:
    """The dynamic program: levels of non-dominated prefixes, and the number of (prefix,
    configuration) combinations it evaluated. ``obj_terms[c]``: the objective of cell ``c``'s
    configurations, ``[config]`` or ``[state, config]``; ``dims``: the additive costs to keep within
    ``budgets``. The last level holds the ``layers`` best designs (``final="top"``, by branch and
    bound, see :func:`_last_level`) or, with ``final="front"``, every feasible design that no other
    beats on the objective and the first of ``dims`` (the front of the objective against it).

    For ``"top"``, a beam search first finds ``layers`` feasible designs; the ``layers``-th best
    of them is the **incumbent**, a lower bound on the ``layers``-th best design. Every prefix or
    configuration whose completion bound (:class:`_Chain`) falls below it is dropped: no design
    through it can be among the ``layers`` best. Without an incumbent (the beam found fewer) only
    infeasible prefixes are dropped."""
    chain = _Chain(table, obj_terms, dims, budgets, peak_limit, stock)
    floor, combos = -np.inf, 0
    if final == "top":
        found, combos = _forward(chain, layers, "beam", -np.inf)
        floor = _kth(found[-1].obj, layers) if len(found) == len(chain.cells) else -np.inf
    levels, n = _forward(chain, layers, final, floor)
    return levels, combos + n


def _forward(chain: _Chain, layers: int, mode: str, floor: float) -> tuple[list[_Level], int]:
    """The chain forwards: ``mode`` ``"top"`` (non-dominated layers per state, branch and bound on
    the last cell), ``"front"`` (every non-dominated design) or ``"beam"`` (only the ``_BEAM``
    prefixes of highest bound at each cell, then the last cell's branch and bound)."""
    cells, k, bud = chain.cells, chain.k, chain.bud
    ncell = len(cells)
    levels: list[_Level] = []
    combos = 0
    prev = _Level(np.zeros(1), np.zeros((1, k)), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64))
    for c, ct in enumerate(cells):
        last = c == ncell - 1
        groups = []
        for si in range(len(ct.in_states)):
            p_idx = np.flatnonzero(prev.state == si)
            if not len(p_idx):
                continue
            p_obj, p_cost = prev.obj[p_idx], prev.cost[p_idx]
            cand = np.flatnonzero(chain.ok[c][si])
            g_obj, g_cost = chain.term(c, si, cand), chain.cost(c, si, cand)
            g_state = ct.out_state[cand]
            # a configuration with the best prefix objective and the cheapest prefix costs
            if np.isfinite(floor):
                fine = _floor_ok(chain.bound(c + 1, g_obj + p_obj.max(), g_cost + p_cost.min(axis=0), g_state), floor)
            else:
                fine = chain.feasible(c + 1, g_cost + p_cost.min(axis=0), g_state)
            cand, g_obj, g_cost, g_state = cand[fine], g_obj[fine], g_cost[fine], g_state[fine]
            if mode != "beam":  # the configurations' own fronts per leaving state (interchangeable)
                keep = np.zeros(len(cand), dtype=bool)
                for s in np.unique(g_state):
                    sel = np.flatnonzero(g_state == s)
                    keep[sel[front_layers(g_obj[sel], g_cost[sel], layers)]] = True
                cand, g_obj, g_cost, g_state = cand[keep], g_obj[keep], g_cost[keep], g_state[keep]
            if len(cand):
                groups.append((p_idx, p_obj, p_cost, cand, g_obj, g_cost, g_state))
        if last and mode != "front":
            lv, n = _last_level(groups, bud, layers, floor)
            levels.append(lv)
            return levels, combos + n
        objs, costs, states, parents, cfgs, bounds = [], [], [], [], [], []
        for p_idx, p_obj, p_cost, cand, g_obj, g_cost, g_state in groups:
            o = (p_obj[:, None] + g_obj[None, :]).ravel()
            cc = (p_cost[:, None, :] + g_cost[None, :, :]).reshape(len(o), k)
            combos += len(o)
            st = np.tile(g_state, len(p_idx))
            if last:
                b = np.where(np.all(cc <= bud, axis=1), o, -np.inf) if k else o
            elif np.isfinite(floor) or mode == "beam":
                b = chain.bound(c + 1, o, cc, st)
            else:
                b = np.where(chain.feasible(c + 1, cc, st), o, -np.inf)
            fine = np.flatnonzero(_floor_ok(b, floor))
            objs.append(o[fine])
            costs.append(cc[fine])
            states.append(st[fine])
            parents.append(p_idx[fine // len(cand)])
            cfgs.append(cand[fine % len(cand)])
            bounds.append(b[fine])
        if not objs:
            levels.append(_empty(k))
            return levels, combos
        lv = _Level(
            np.concatenate(objs), np.concatenate(costs), np.concatenate(states), np.concatenate(parents),
            np.concatenate(cfgs),
        )  # fmt: skip
        if mode == "beam":
            idx = np.argsort(-np.concatenate(bounds), kind="stable")[:_BEAM]
        else:
            keep = np.zeros(len(lv.obj), dtype=bool)
            if last:  # complete designs: the front against the first cost alone
                keep = front_layers(lv.obj, lv.cost[:, :1], layers)
            for s in [] if last else np.unique(lv.state):
                sel = np.flatnonzero(lv.state == s)
                keep[sel[front_layers(lv.obj[sel], lv.cost[sel], layers)]] = True
            idx = np.flatnonzero(keep)
        lv = _Level(lv.obj[idx], lv.cost[idx], lv.state[idx], lv.parent[idx], lv.cfg[idx])
        levels.append(lv)
        prev = lv
    return levels, combos


def _empty(k: int) -> _Level:
    z = np.zeros(0, np.int64)
    return _Level(np.zeros(0), np.zeros((0, k)), z, z, z)


def _last_level(groups: list[Any], bud: np.ndarray, layers: int, floor: float) -> tuple[_Level, int]:
    """The best ``layers`` layers of designs, by branch and bound over the last cell's
    configurations: each one's bound is its objective plus the least, over the limited costs, of
    the best prefix within that cost's budget alone (a staircase lookup per cost); configurations
    are combined with every prefix in decreasing order of their bound, in growing chunks, until
    the next bound falls below the ``layers``-th best design found (or below ``floor``, a lower
    bound on it)."""
    k = len(bud)
    ub_parts, where = [], []
    for gi, (_, p_obj, p_cost, _, g_obj, g_cost, _) in enumerate(groups):
        if k:
            best = np.full(len(g_obj), np.inf)
            for j in range(k):
                st = _stair(p_obj, p_cost[:, j])
                best = np.minimum(best, _lookup(st, bud[j] - g_cost[:, j] + abs(bud[j]) * _TOL))
            ub = g_obj + best
        else:
            ub = g_obj + p_obj.max()
        ub_parts.append(ub)
        where.append(np.stack([np.full(len(ub), gi), np.arange(len(ub))], axis=1))
    if not ub_parts:
        return _empty(k), 0
    ub = np.concatenate(ub_parts)
    loc = np.concatenate(where)
    order = np.argsort(-ub, kind="stable")
    order = order[_floor_ok(ub[order], floor)]
    found: list[tuple[np.ndarray, ...]] = []
    objs = np.zeros(0)
    combos = 0
    a, chunk = 0, 16
    while a < len(order):
        if len(objs) and not _floor_ok(ub[order[a : a + 1]], _kth(objs, layers))[0]:
            break
        part = order[a : a + chunk]
        a += len(part)
        chunk *= 2
        for gi in np.unique(loc[part, 0]):
            p_idx, p_obj, p_cost, cand, g_obj, g_cost, _ = groups[int(gi)]
            xs = loc[part[loc[part, 0] == gi], 1]
            o = (p_obj[:, None] + g_obj[None, xs]).ravel()
            cc = (p_cost[:, None, :] + g_cost[None, xs, :]).reshape(len(o), k)
            combos += len(o)
            fine = np.all(cc <= bud, axis=1) if k else np.ones(len(o), dtype=bool)
            if fine.any():
                par = np.repeat(p_idx, len(xs))[fine]
                cf = np.tile(cand[xs], len(p_idx))[fine]
                found.append((o[fine], cc[fine], par, cf))
        if found:
            objs = np.concatenate([f[0] for f in found])
    if not found:
        return _empty(k), combos
    o = np.concatenate([f[0] for f in found])
    cc = np.concatenate([f[1] for f in found])
    par = np.concatenate([f[2] for f in found])
    cf = np.concatenate([f[3] for f in found])
    # complete designs: the best ``layers`` by objective (ties: the lowest first cost)
    keep = np.lexsort((cc[:, 0] if k else np.zeros(len(o)), -o))[:layers]
    return _Level(o[keep], cc[keep], np.zeros(len(keep), np.int64), par[keep], cf[keep]), combos


def _kth(objs: np.ndarray, layers: int) -> float:
    """The ``layers``-th largest value among ``objs`` (a lower bound on the
    ``layers``-th best design), ``-inf`` when fewer were found."""
    if len(objs) < layers:
        return -np.inf
    return float(np.partition(objs, len(objs) - layers)[len(objs) - layers])


def _configs_of(levels: list[_Level], item: int) -> list[int]:
    cfg = []
    for lv in reversed(levels):
        cfg.append(int(lv.cfg[item]))
        item = int(lv.parent[item])
    return cfg[::-1]


def _spec_of(space: Space, table: DeploymentTable, cfgs: list[int]) -> DenseSpec:
    d = np.array([table.cells[c].d[x] for c, x in enumerate(cfgs)])
    w = np.array([table.cells[c].w[x] for c, x in enumerate(cfgs)])
    t = np.array([table.cells[c].t[x] for c, x in enumerate(cfgs)])
    return space.to_spec(d, w, t)


def _active(limits: Limits, margin: float) -> tuple[list[str], dict[str, float], Optional[float]]:
    eff = limits.effective(margin)
    dims = [ADDITIVE[k] for k in ADDITIVE if k in eff]
    budgets = {ADDITIVE[k]: v for k, v in eff.items() if k in ADDITIVE}
    return dims, budgets, eff.get("max_peak_memory_mb")


def exact_candidates(
    tables: ExactTables, limits: Limits, margin: float, top_k: int
) -> tuple[list[tuple[DenseSpec, Deployment]], int]:
    """The exact top ``top_k`` designs over every deployment, best first, and the number of
    (prefix, configuration) combinations the chain evaluated."""
    dims, budgets, peak = _active(limits, margin)
    ranked: list[tuple[float, float, int, DenseSpec, Deployment]] = []
    combos = 0
    for di, table in enumerate(tables.tables):
        terms = _objective_terms(table, tables.objective)
        levels, n = run_chain(table, terms, dims, budgets, peak, top_k, stock=table.completions)
        combos += n
        last = levels[-1]
        if len(levels) < len(table.cells) or not len(last.obj):
            continue
        order = np.lexsort((last.cost[:, 0] if dims else np.zeros(len(last.obj)), -last.obj))[:top_k]
        for item in order:
            spec = _spec_of(tables.space, table, _configs_of(levels, int(item)))
            tie = float(last.cost[item, 0]) if dims else 0.0
            ranked.append((-float(last.obj[item]), tie, di, spec, table.deployment))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(r[3], r[4]) for r in ranked], combos


def exact_front(tables: ExactTables, against: str, limits: Limits) -> list[Design]:
    """The exact objective-versus-``against`` front over every deployment (see :func:`pareto_front`)."""
    from nnflash.search.api import evaluate, meets

    dims, budgets, peak = _active(limits, 0.0)
    key = "latency_ms" if against == "latency" else "energy_mj"
    if key not in dims:
        budgets[key] = np.inf
    dims = [key] + [d for d in dims if d != key]
    pts: list[tuple[float, float, DenseSpec, Deployment]] = []
    for table in tables.tables:
        terms = _objective_terms(table, tables.objective)
        levels, _ = run_chain(table, terms, dims, budgets, peak, 1, final="front", stock=table.completions)
        last = levels[-1]
        if len(levels) < len(table.cells) or not len(last.obj):
            continue
        j = dims.index(key)
        nd = np.flatnonzero(nondominated(last.obj, last.cost[:, [j]]))
        for item in nd:
            spec = _spec_of(tables.space, table, _configs_of(levels, int(item)))
            pts.append((float(last.obj[item]), float(last.cost[item, j]), spec, table.deployment))
    if not pts:
        return []
    obj = np.array([p[0] for p in pts])
    cost = np.array([[p[1]] for p in pts])
    nd = np.flatnonzero(nondominated(obj, cost))
    nd = nd[np.argsort(cost[nd, 0], kind="stable")]
    out = []
    for i in nd:
        design = evaluate(pts[i][2], pts[i][3], tables.objective, limits)
        if meets(design.margins):
            out.append(design)
    return out
