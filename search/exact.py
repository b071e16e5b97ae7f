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
   model's constant into the first cell.
2. **Per-cell fronts**: the configurations of a cell that share the entering and the leaving state
   are interchangeable in every network, so only the non-dominated ones (objective up, every
   *limited* cost down) can be part of an optimum; keeping ``K`` non-dominated layers keeps the
   exact top ``K``.
3. **Merge along the chain**: the prefix front of cells ``0..c-1`` leaving state ``s`` is combined
   with cell ``c``'s fronts entered by ``s`` (sums of objective and costs), pruned by the limits
   (a prefix whose cost plus the cheapest completion exceeds a limit is dropped) and reduced again
   to non-dominated layers per leaving state. After the last cell the feasible items are ranked.

Back-pointers rebuild each design's configuration. Peak memory is a filter on (configuration,
entering state) pairs. With one limited cost the fronts are staircases (an ``O(n log n)`` sort);
with several, a blockwise dominance test. Co-design runs the chain per deployment and ranks the
union. The result is checked against brute-force enumeration in ``tests/unit/test_search_exact.py``.
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


def run_chain(
    table: DeploymentTable,
    obj_terms: list[np.ndarray],
    dims: list[str],
    budgets: dict[str, float],
    peak_limit: Optional[float],
    layers: int,
    final: str = "top",
) -> tuple[list[_Level], int]:
    """The dynamic program: levels of non-dominated prefixes, and the number of (prefix,
    configuration) combinations it evaluated. ``obj_terms[c]``: the objective of cell ``c``'s
    configurations, ``[config]`` or ``[state, config]``; ``dims``: the additive costs to keep within
    ``budgets``. The last level holds the ``layers`` best designs (``final="top"``, by branch and
    bound, see :func:`_last_level`) or every non-dominated one (``final="front"``)."""
    cells = table.cells
    ncell = len(cells)
    k = len(dims)
    bud = np.array([budgets[d] * (1 + _ROUNDING) for d in dims]) if k else np.zeros(0)
    # per-cell feasibility (peak memory) and the cheapest completion after each cell
    ok = []
    for ct in cells:
        m = np.ones_like(ct.costs["latency_ms"], dtype=bool)
        if peak_limit is not None:
            m &= ct.costs["peak_memory_mb"] <= peak_limit * (1 + _ROUNDING)
        ok.append(m)
    cheapest = np.zeros((ncell, k))
    for c, ct in enumerate(cells):
        for j, dname in enumerate(dims):
            v = np.where(ok[c], ct.costs[dname], np.inf)
            cheapest[c, j] = v.min() if v.size else np.inf
    rest = np.zeros((ncell + 1, k))
    for c in range(ncell - 1, -1, -1):
        rest[c] = rest[c + 1] + cheapest[c]
    levels: list[_Level] = []
    combos = 0
    prev = _Level(np.zeros(1), np.zeros((1, k)), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64))
    for c, ct in enumerate(cells):
        term = obj_terms[c]
        groups = []
        for si in range(len(ct.in_states)):
            p_idx = np.flatnonzero(prev.state == si)
            if not len(p_idx):
                continue
            p_obj, p_cost = prev.obj[p_idx], prev.cost[p_idx]
            cand = np.flatnonzero(ok[c][si])
            g_obj = (term[si] if term.ndim == 2 else term)[cand]
            g_cost = np.stack([ct.costs[dn][si, cand] for dn in dims], axis=1) if k else np.zeros((len(cand), 0))
            if k:
                fine = np.all(g_cost + rest[c + 1] + p_cost.min(axis=0) <= bud, axis=1)
                cand, g_obj, g_cost = cand[fine], g_obj[fine], g_cost[fine]
            # the configurations' own fronts per leaving state (interchangeable in every network)
            g_state = ct.out_state[cand]
            keep = np.zeros(len(cand), dtype=bool)
            for s in np.unique(g_state):
                sel = np.flatnonzero(g_state == s)
                keep[sel[front_layers(g_obj[sel], g_cost[sel], layers)]] = True
            if keep.any():
                groups.append((p_idx, p_obj, p_cost, cand[keep], g_obj[keep], g_cost[keep], g_state[keep]))
        if c == ncell - 1 and final == "top":
            lv, n = _last_level(groups, bud, layers)
            levels.append(lv)
            return levels, combos + n
        objs, costs, states, parents, cfgs = [], [], [], [], []
        for p_idx, p_obj, p_cost, cand, g_obj, g_cost, g_state in groups:
            o = (p_obj[:, None] + g_obj[None, :]).ravel()
            cc = (p_cost[:, None, :] + g_cost[None, :, :]).reshape(len(o), k)
            combos += len(o)
            par = np.repeat(p_idx, len(cand))
            cf = np.tile(cand, len(p_idx))
            st = np.tile(g_state, len(p_idx))
            if k:
                fine = np.all(cc + rest[c + 1] <= bud, axis=1)
                o, cc, par, cf, st = o[fine], cc[fine], par[fine], cf[fine], st[fine]
            objs.append(o)
            costs.append(cc)
            states.append(st)
            parents.append(par)
            cfgs.append(cf)
        if not objs:
            levels.append(_empty(k))
            return levels, combos
        lv = _Level(
            np.concatenate(objs), np.concatenate(costs), np.concatenate(states), np.concatenate(parents),
            np.concatenate(cfgs),
        )  # fmt: skip
        keep = np.zeros(len(lv.obj), dtype=bool)
        last = c == ncell - 1
        sels = [np.arange(len(lv.obj))] if last else [np.flatnonzero(lv.state == s) for s in np.unique(lv.state)]
        for sel in sels:
            keep[sel[front_layers(lv.obj[sel], lv.cost[sel], layers)]] = True
        idx = np.flatnonzero(keep)
        lv = _Level(lv.obj[idx], lv.cost[idx], lv.state[idx], lv.parent[idx], lv.cfg[idx])
        levels.append(lv)
        prev = lv
    return levels, combos


def _empty(k: int) -> _Level:
    z = np.zeros(0, np.int64)
    return _Level(np.zeros(0), np.zeros((0, k)), z, z, z)


def _last_level(groups: list[Any], bud: np.ndarray, layers: int) -> tuple[_Level, int]:
    """The best ``layers`` layers of designs, by branch and bound over the last cell's
    configurations: each one's bound is its objective plus that of the best prefix within the first
    budget alone (a staircase lookup, exact with one limited cost); configurations are combined
    with every prefix in decreasing order of their bound, in growing chunks, until the next bound
    falls below the ``layers``-th best design found."""
    k = len(bud)
    ub_parts, where = [], []
    for gi, (_, p_obj, p_cost, _, g_obj, g_cost, _) in enumerate(groups):
        if k:
            order = np.argsort(p_cost[:, 0])
            c0 = p_cost[order, 0]
            best = np.maximum.accumulate(p_obj[order])
            pos = np.searchsorted(c0, bud[0] - g_cost[:, 0], side="right") - 1
            ub = np.where(pos >= 0, g_obj + best[np.maximum(pos, 0)], -np.inf)
        else:
            ub = g_obj + p_obj.max()
        ub_parts.append(ub)
        where.append(np.stack([np.full(len(ub), gi), np.arange(len(ub))], axis=1))
    if not ub_parts:
        return _empty(k), 0
    ub = np.concatenate(ub_parts)
    loc = np.concatenate(where)
    order = np.argsort(-ub, kind="stable")
    order = order[np.isfinite(ub[order])]
    found: list[tuple[np.ndarray, ...]] = []
    objs = np.zeros(0)
    combos = 0
    a, chunk = 0, 16
    while a < len(order):
        if len(objs) and ub[order[a]] < _kth(objs, layers):
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
        levels, n = run_chain(table, terms, dims, budgets, peak, top_k)
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
        dims = [key] + dims
        budgets[key] = np.inf
    pts: list[tuple[float, float, DenseSpec, Deployment]] = []
    for table in tables.tables:
        terms = _objective_terms(table, tables.objective)
        levels, _ = run_chain(table, terms, dims, budgets, peak, 1, final="front")
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
