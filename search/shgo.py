"""Our hierarchical SHGO, after FLASH (whose paper body we could not read: only that its optimizer
is hierarchical, built on ``scipy.optimize.shgo``, and takes about 0.1 s). The hierarchy is ours:

1. **Hardware level**: each deployment (a runtime, thread count and precision of one device) is
   searched in turn, and the best design over all of them wins.
2. **SHGO level** (continuous, ``scipy.optimize.shgo`` with Sobol sampling): how each *limited*
   additive cost (latency, energy, params, MACs) is split between the cells. For every limit,
   ``C - 1`` variables in ``[0, 1]`` give each cell a share of the slack above the cells' cheapest
   costs (stick breaking: cell 0 gets ``u_0``, cell 1 ``(1 - u_0) u_1`` of the rest, and so on),
   so the integer knobs (depth, width, skip cap) never enter SHGO: what SHGO relaxes is the
   budget, and the staircase of the roofline in width (channel padding, NCHWc blocking) is not
   interpolated but looked up exactly by the level below, which is what keeps violations out.
3. **Cell level** (discrete, exact per cell): given its budgets, each cell in turn takes its best
   configuration (highest objective share; ties: lowest first-limit cost) among those whose
   costs, *under the state the previous cell leaves*, fit the cell's budget plus whatever the
   earlier cells left unused; peak memory is a filter. This is a lookup over one cell's
   configurations (the per-cell tables of :mod:`nnflash.search.exact`), never the exact solver's
   chain. A split no cell can meet is scored by how far it misses.

SHGO minimizes the negated objective of the rounded design: a piecewise-constant function of the
split, so its sampling does the work; its local minimizer (COBYLA, a few steps) rarely moves.
**Repair**, from the best few designs SHGO evaluated, in two steps: coordinate ascent re-chooses
each cell with every other cell fixed and the whole remaining budget, until nothing improves; then,
for the best five, **pair exchange** re-chooses two cells at once (all others fixed) for the best
sum of their objectives within what the others leave, until no pair improves. One cell at a time
cannot move budget from one cell to another (lowering one cell frees budget that no single other
cell can use unless the first changes at the same moment); the pair exchange can. Per cell and
entering state it keeps only the configurations no other dominates (objective against costs,
counting what the next, fixed cell costs under the state each leaves), so a pair is a staircase
lookup with one limit and a blockwise scan with several. The final designs are re-checked with
the full cost models like every method's.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from nnflash.models.spec import DenseSpec
from nnflash.search.exact import ExactTables, _active, _spec_of
from nnflash.search.pareto import nondominated
from nnflash.search.types import Deployment, Limits

#: Sobol points SHGO samples per deployment.
SAMPLES = 64
#: Full-network evaluations of one shgo search of one deployment, about (the random method's
#: default budget per deployment); the exact count is reported by each search.
DEFAULT_EVALUATIONS = 100
#: Better configurations of a cell the repair tries on the whole network, best first.
_POLISH_TRIES = 8
#: The best designs SHGO saw that the pair exchange repairs too (after the coordinate ascent).
_EXCHANGE_STARTS = 5
#: Pair evaluations per block of the pair exchange with several limits (memory, not results).
_PAIR_CELLS = 1 << 20


class _Inner:
    """The cell level for one deployment and one set of limits."""

    def __init__(self, table: Any, terms: list[np.ndarray], dims: list[str], budgets: dict[str, float],
                 peak: Optional[float], cache: Optional[dict[Any, Any]] = None) -> None:  # fmt: skip
        self.cells = table.cells
        self.terms = terms
        self.dims = dims
        self.bud = np.array([budgets[d] for d in dims])
        self.k = len(dims)
        self.peak = peak
        self.evaluations = 0
        # per cell and entering state: the admissible configurations and their costs (sorted by
        # objective, then first cost); they depend on the limited costs and the peak filter only,
        # so they are cached with the tables across searches
        key = ("shgo", id(table), tuple(dims), peak)
        cached = cache.get(key) if cache is not None else None
        if cached is None:
            cached = self._candidates(table, terms, dims, peak)
            if cache is not None:
                cache[key] = cached
        self.cand, cheapest = cached
        self.cheapest = cheapest
        self.slack = self.bud - cheapest.sum(axis=0) if self.k else np.zeros(0)
        sides = cache.setdefault(("shgo-sides", id(table), tuple(dims), peak), {}) if cache is not None else {}
        self._sides: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = sides

    @staticmethod
    def _candidates(table: Any, terms: list[np.ndarray], dims: list[str], peak: Optional[float]) -> tuple[Any, Any]:
        k = len(dims)
        cand = []
        cheapest = np.zeros((len(table.cells), k))
        for c, ct in enumerate(table.cells):
            rows = []
            for si in range(len(ct.in_states)):
                ok = np.ones(ct.d.shape[0], dtype=bool)
                if peak is not None:
                    ok &= ct.costs["peak_memory_mb"][si] <= peak
                idx = np.flatnonzero(ok)
                cost = np.stack([ct.costs[dn][si, idx] for dn in dims], axis=1) if k else np.zeros((len(idx), 0))
                obj = terms[c][idx]
                order = np.lexsort((cost[:, 0] if k else np.zeros(len(idx)), -obj))
                rows.append((idx[order], obj[order], cost[order]))
            cand.append(rows)
            if k:
                allc = [r[2].min(axis=0) for r in rows if len(r[0])]
                cheapest[c] = np.min(allc, axis=0) if allc else np.inf
        return cand, cheapest

    def split(self, u: np.ndarray) -> np.ndarray:
        """Per-cell budgets ``(C, k)`` from the SHGO variables (stick breaking per limit)."""
        C = len(self.cells)
        shares = np.zeros((C, self.k))
        uu = np.asarray(u, dtype=np.float64).reshape(self.k, C - 1) if C > 1 else np.zeros((self.k, 0))
        for j in range(self.k):
            left = 1.0
            for c in range(C - 1):
                shares[c, j] = left * uu[j, c]
                left -= shares[c, j]
            shares[C - 1, j] = left
        return self.cheapest + shares * np.maximum(self.slack, 0.0)

    def pick(self, c: int, si: int, budget: np.ndarray) -> int:
        """Position (in the cell's candidate list) of the best configuration within ``budget``,
        or -1."""
        idx, obj, cost = self.cand[c][si]
        if not len(idx):
            return -1
        if not self.k:
            return 0
        fits = np.flatnonzero(np.all(cost <= budget, axis=1))
        return int(fits[0]) if len(fits) else -1

    def design(self, budgets: np.ndarray) -> tuple[float, list[int], float]:
        """The cell level: (objective, configuration per cell, shortfall) for per-cell budgets."""
        self.evaluations += 1
        si, carry = 0, np.zeros(self.k)
        total, cfgs, miss = 0.0, [], 0.0
        for c in range(len(self.cells)):
            b = budgets[c] + carry
            pos = self.pick(c, si, b)
            idx, obj, cost = self.cand[c][si]
            if not len(idx):
                return -np.inf, [], np.inf
            if pos < 0:  # nothing fits: take the cheapest and count the miss
                pos = int(np.argmin(cost.sum(axis=1) if self.k else obj))
                miss += float(np.sum(np.maximum(cost[pos] - b, 0) / np.maximum(self.bud, 1e-300)))
            x = int(idx[pos])
            total += float(obj[pos])
            carry = b - cost[pos] if self.k else carry
            cfgs.append(x)
            si = int(self.cells[c].out_state[x])
        return total, cfgs, miss

    def network(self, cfgs: list[int]) -> tuple[float, np.ndarray, list[int]]:
        """Objective and costs of a full configuration (entering states followed along)."""
        self.evaluations += 1
        si, obj, cost, states = 0, 0.0, np.zeros(self.k), []
        for c, x in enumerate(cfgs):
            ct = self.cells[c]
            states.append(si)
            obj += float(self.terms[c][x])
            for j, dn in enumerate(self.dims):
                cost[j] += ct.costs[dn][si, x]
            if self.peak is not None and ct.costs["peak_memory_mb"][si, x] > self.peak:
                obj = -np.inf  # a changed entering state can break the memory filter
            si = int(ct.out_state[x])
        return obj, cost, states

    def polish(self, cfgs: list[int]) -> tuple[float, list[int]]:
        """Repair by coordinate ascent: re-choose each cell with the others fixed and the whole
        remaining budget, until no cell improves."""
        best_obj, cost, _ = self.network(cfgs)
        if not np.isfinite(best_obj) or (self.k and np.any(cost > self.bud)):
            return -np.inf, cfgs
        improved = True
        while improved:
            improved = False
            for c in range(len(self.cells)):
                _, _, states = self.network(cfgs)
                si = states[c]
                idx, obj, ccost = self.cand[c][si]
                x_old = cfgs[c]
                own = np.array([self.cells[c].costs[dn][si, x_old] for dn in self.dims]) if self.k else np.zeros(0)
                room = self.bud - (cost - own)
                # better configurations that fit the room on their own costs; one that changes the
                # state the next cell sees is checked on the whole network
                fits = np.all(ccost <= room, axis=1) if self.k else np.ones(len(idx), dtype=bool)
                hit = np.flatnonzero(fits & (obj > self.terms[c][x_old] + 1e-12))
                for h in hit[:_POLISH_TRIES]:
                    trial = list(cfgs)
                    trial[c] = int(idx[h])
                    o2, c2, _ = self.network(trial)
                    if (not self.k or np.all(c2 <= self.bud)) and o2 > best_obj:  # -inf: peak missed
                        cfgs, best_obj, cost, improved = trial, o2, c2, True
                        break
        return best_obj, cfgs

    # ------------------------------------------------------------------ the pair exchange

    def _side(self, c: int, si: int, nxt: Optional[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell ``c``'s configurations under entering state ``si`` that no other dominates, as
        (configurations, objective, effective costs ``(n, k)``): the effective cost adds what the
        next cell, fixed at ``nxt = (cell, configuration)``, costs under the state each one leaves
        (and the next cell's peak must fit too). Cached per (cell, state, next)."""
        key = (c, si, nxt)
        hit = self._sides.get(key)
        if hit is not None:
            return hit
        ct = self.cells[c]
        x = np.arange(ct.d.shape[0])
        cost = np.stack([ct.costs[dn][si] for dn in self.dims], axis=1) if self.k else np.zeros((len(x), 0))
        ok = np.ones(len(x), dtype=bool)
        if self.peak is not None:
            ok &= ct.costs["peak_memory_mb"][si] <= self.peak
        if nxt is not None:
            nc, nx = nxt
            nt = self.cells[nc]
            ns = ct.out_state
            if self.k:
                cost = cost + np.stack([nt.costs[dn][ns, nx] for dn in self.dims], axis=1)
            if self.peak is not None:
                ok &= nt.costs["peak_memory_mb"][ns, nx] <= self.peak
        x, obj, cost = x[ok], self.terms[c][ok], cost[ok]
        keep = nondominated(obj, cost) if len(x) else np.zeros(0, dtype=bool)
        out = (x[keep], obj[keep], cost[keep])
        self._sides[key] = out
        return out

    def _best_pair(self, oa: np.ndarray, ca: np.ndarray, ob: np.ndarray, cb: np.ndarray,
                   room: np.ndarray) -> tuple[float, int, int]:  # fmt: skip
        """The best ``oa[i] + ob[j]`` with ``ca[i] + cb[j] <= room`` (every cost): (sum, i, j)."""
        if not len(oa) or not len(ob):
            return -np.inf, -1, -1
        if self.k == 1:  # b's side is non-dominated: by cost ascending its objective never falls, so
            # the best that fits a budget is the last one at or below it
            order = np.argsort(cb[:, 0])
            pos = np.searchsorted(cb[order, 0], room[0] - ca[:, 0], side="right") - 1
            tot = np.where(pos >= 0, oa + ob[order[np.maximum(pos, 0)]], -np.inf)
            i = int(np.argmax(tot))
            if not np.isfinite(tot[i]):
                return -np.inf, -1, -1
            return float(tot[i]), i, int(order[pos[i]])
        best, bi, bj = -np.inf, -1, -1
        step = max(1, _PAIR_CELLS // max(len(ob), 1))
        for s in range(0, len(oa), step):
            fits = np.all(ca[s : s + step, None, :] + cb[None, :, :] <= room, axis=2) if self.k else None
            tot = oa[s : s + step, None] + ob[None, :]
            if fits is not None:
                tot = np.where(fits, tot, -np.inf)
            flat = int(np.argmax(tot))
            i, j = divmod(flat, tot.shape[1])
            if tot[i, j] > best:
                best, bi, bj = float(tot[i, j]), s + i, j
        return best, bi, bj

    def exchange(self, cfgs: list[int]) -> tuple[float, list[int]]:
        """Repair by pair exchange: re-choose two cells at once (the others fixed) for the best
        sum of their objectives within the budget the other cells leave, until no pair improves.
        This moves budget from one cell to another, which re-choosing one cell at a time cannot."""
        best_obj, cost, states = self.network(cfgs)
        if not np.isfinite(best_obj) or (self.k and np.any(cost > self.bud)):
            return -np.inf, cfgs
        C = len(self.cells)
        improved = True
        while improved:
            improved = False
            for a in range(C - 1):
                for b in range(a + 1, C):
                    trial = self._exchange_pair(cfgs, states, a, b)
                    if trial is None:
                        continue
                    o2, c2, s2 = self.network(trial)
                    if (not self.k or np.all(c2 <= self.bud)) and o2 > best_obj + 1e-12:
                        cfgs, best_obj, states, improved = trial, o2, s2, True
        return best_obj, cfgs

    def _exchange_pair(self, cfgs: list[int], states: list[int], a: int, b: int) -> Optional[list[int]]:
        C = len(self.cells)
        # the cells whose costs do not move: all but a, b, the one after a (its entering state
        # follows a) and the one after b
        moving = {a, b, a + 1, b + 1}
        rest = np.zeros(self.k)
        for c in range(C):
            if c not in moving:
                for j, dn in enumerate(self.dims):
                    rest[j] += self.cells[c].costs[dn][states[c], cfgs[c]]
        room = self.bud - rest
        nxt_a = (a + 1, cfgs[a + 1]) if a + 1 < b else None
        nxt_b = (b + 1, cfgs[b + 1]) if b + 1 < C else None
        xa, oa, ca = self._side(a, states[a], nxt_a)
        if b > a + 1:  # b's entering state is fixed by the cell before it
            groups = [(states[b], np.arange(len(xa)))]
        else:  # b's entering state is the one a leaves: one group per state
            out = self.cells[a].out_state[xa]
            groups = [(int(g), np.flatnonzero(out == g)) for g in np.unique(out)]
        best, pick = sum(float(self.terms[c][cfgs[c]]) for c in (a, b)) + 1e-12, None
        for sb, ia in groups:
            xb, ob, cb = self._side(b, sb, nxt_b)
            tot, i, j = self._best_pair(oa[ia], ca[ia], ob, cb, room)
            if tot > best:
                best, pick = tot, (int(xa[ia[i]]), int(xb[j]))
        if pick is None:
            return None
        trial = list(cfgs)
        trial[a], trial[b] = pick
        return trial


def shgo_candidates(
    tables: ExactTables, limits: Limits, margin: float, top_k: int, seed: int = 0
) -> tuple[list[tuple[DenseSpec, Deployment]], int]:
    """Candidates (best first) of the hierarchical SHGO over every deployment, and the number of
    full-network evaluations it made (``seed`` is unused: SHGO's Sobol sampling is deterministic)."""
    from scipy.optimize import shgo

    dims, budgets, peak = _active(limits, margin)
    found: list[tuple[float, tuple[int, ...], int]] = []
    evaluations = 0
    for di, table in enumerate(tables.tables):
        terms = [tables.objective.direction * ct.metric[tables.objective.metric] for ct in table.cells]
        inner = _Inner(table, terms, dims, budgets, peak, tables.extra)
        if inner.k and np.any(inner.slack < 0):
            evaluations += inner.evaluations
            continue
        seen: dict[tuple[int, ...], float] = {}
        nvar = inner.k * (len(table.cells) - 1)

        def f(u: np.ndarray, inner: _Inner = inner, seen: dict[tuple[int, ...], float] = seen) -> float:
            obj, cfgs, miss = inner.design(inner.split(u))
            if not cfgs:
                return 1e12
            if miss > 0:
                return 1e6 * (1.0 + miss)
            seen[tuple(cfgs)] = obj
            return -obj

        if nvar == 0:
            f(np.zeros(0))
        else:
            shgo(
                f,
                [(0.0, 1.0)] * nvar,
                n=SAMPLES,
                iters=1,
                sampling_method="sobol",
                minimizer_kwargs={"method": "COBYLA", "options": {"maxiter": 4}},
                options={"minimize_every_iter": False},
            )
        # repair: polish the best few designs SHGO saw
        starts = sorted(seen.items(), key=lambda kv: -kv[1])[: max(5, top_k)]
        for n, (cfg, _) in enumerate(starts):
            obj, cfgs = inner.polish(list(cfg))
            if n < _EXCHANGE_STARTS and np.isfinite(obj):
                obj, cfgs = inner.exchange(cfgs)
            if np.isfinite(obj):
                seen[tuple(cfgs)] = obj
        evaluations += inner.evaluations
        for cfg, obj in seen.items():
            found.append((obj, cfg, di))
    found.sort(key=lambda r: -r[0])
    out = []
    for _, cfg, di in found[: top_k + 3]:
        table = tables.tables[di]
        out.append((_spec_of(tables.space, table, list(cfg)), table.deployment))
    return out, evaluations
