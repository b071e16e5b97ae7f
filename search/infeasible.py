"""Infeasibility diagnostics: for each limit, the tightest value the space reaches while the other
limits hold, found exactly by the exact method's chain with that cost as the objective."""

from __future__ import annotations

from typing import Optional

import numpy as np

from nnflash.search.exact import ADDITIVE, ExactTables, run_chain
from nnflash.search.types import COST_LIMITS, Infeasible, Limits

_UNITS = {
    "max_latency_ms": "ms",
    "max_energy_mj": "mJ",
    "max_params": "params",
    "max_macs": "MACs",
    "max_peak_memory_mb": "MB",
    "max_area_mm2": "mm2",
}


def _min_additive(tables: ExactTables, name: str, others: Limits, margin: float) -> Optional[float]:
    """The smallest ``name`` cost (``latency_ms``...) of any design meeting ``others``."""
    from nnflash.search.exact import _active

    dims, budgets, peak = _active(others, margin)
    best: Optional[float] = None
    for table in tables.tables:
        if name not in table.cells[0].costs:
            continue
        terms = [-ct.costs[name] for ct in table.cells]
        levels, _ = run_chain(table, terms, dims, budgets, peak, 1)
        if len(levels) == len(table.cells) and len(levels[-1].obj):
            v = -float(levels[-1].obj.max())
            best = v if best is None else min(best, v)
    return best


def _min_peak(tables: ExactTables, others: Limits, margin: float) -> Optional[float]:
    """The smallest peak memory of any design meeting ``others`` (bisection over the distinct
    per-cell peaks: the network's peak is one of them)."""
    from nnflash.search.exact import _active

    dims, budgets, _ = _active(others, margin)
    values = np.unique(np.concatenate([ct.costs["peak_memory_mb"].ravel() for t in tables.tables for ct in t.cells]))

    def feasible(p: float) -> bool:
        for table in tables.tables:
            terms = [np.zeros_like(ct.metric["nn_degree"]) for ct in table.cells]
            levels, _ = run_chain(table, terms, dims, budgets, p, 1)
            if len(levels) == len(table.cells) and len(levels[-1].obj):
                return True
        return False

    if not feasible(float(values[-1])):
        return None
    lo, hi = 0, len(values) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(float(values[mid])):
            hi = mid
        else:
            lo = mid + 1
    return float(values[lo])


def infeasible_error(
    space_name: str, given: dict[str, float], reachable: dict[str, Optional[float]], margin: float, method: str
) -> Infeasible:
    """The :class:`Infeasible` error of any method: ``reachable[name]`` is the smallest value of limit
    ``name``'s cost among the designs that meet the other limits (``None``: none does); latency and
    energy are turned into the limit that would admit it at ``margin``."""
    tightest: dict[str, Optional[float]] = {}
    parts = []
    for name, value in given.items():
        best = reachable.get(name)
        if best is not None and name in COST_LIMITS and margin > 0:
            best = best / (1.0 - margin)
        tightest[name] = best
        unit = _UNITS[name]
        if best is None:
            parts.append(f"{name} {value:g} {unit}: the other limits alone admit no design")
        else:
            parts.append(f"{name} {value:g} {unit}: the tightest reachable under the other limits is {best:.6g} {unit}")
    where = f" at margin {margin:g}" if margin else ""
    msg = f"no design of space {space_name!r} meets the limits{where} (method {method}); " + "; ".join(parts)
    return Infeasible(msg, tightest)


def diagnose(tables: ExactTables, limits: Limits, margin: float, method: str) -> Infeasible:
    """The :class:`Infeasible` error for ``limits``: for each limit, the tightest value reachable
    under the others (at the same margin)."""
    given = limits.given()
    reachable: dict[str, Optional[float]] = {}
    for name in given:
        others = Limits(**{k: v for k, v in given.items() if k != name})
        if name in ADDITIVE:
            reachable[name] = _min_additive(tables, ADDITIVE[name], others, margin)
        elif name == "max_peak_memory_mb":
            reachable[name] = _min_peak(tables, others, margin)
        else:
            reachable[name] = None
    return infeasible_error(tables.space.name, given, reachable, margin, method)
