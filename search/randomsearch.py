"""Random search: designs drawn uniformly from the space's distinct configurations, as many
full-network evaluations as the hierarchical SHGO made (the baseline it must beat)."""

from __future__ import annotations

import numpy as np

from nnflash.models.spec import DenseSpec
from nnflash.search.exact import ExactTables, _active, _spec_of
from nnflash.search.types import Deployment, Limits


def _config_index(space, c: int, d: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Index of configurations ``(d, w, t)`` of cell ``c`` in :func:`nnflash.search.exact.cell_configs`."""
    cell = space.cells[c]
    _, _, n_tc = cell.grid()
    offset = np.cumsum(n_tc) - n_tc
    di = np.searchsorted(np.array(cell.depths), d)
    wi = np.searchsorted(np.array(cell.widths), w)
    return offset[di * len(cell.widths) + wi] + t


def random_candidates(
    tables: ExactTables, limits: Limits, margin: float, top_k: int, seed: int, evaluations: int
) -> tuple[list[tuple[DenseSpec, Deployment]], int]:
    """The best of ``evaluations`` uniform designs per deployment that meet the limits, best first."""
    dims, budgets, peak = _active(limits, margin)
    rng = np.random.default_rng(seed)
    space = tables.space
    found: list[tuple[float, float, list[int], int]] = []
    for di, table in enumerate(tables.tables):
        d, w, t = space.sample_arrays(evaluations, rng)
        cfg = np.stack([_config_index(space, c, d[:, c], w[:, c], t[:, c]) for c in range(len(space.cells))], axis=1)
        si = np.zeros(evaluations, dtype=np.int64)
        obj = np.zeros(evaluations)
        cost = {dn: np.zeros(evaluations) for dn in dims}
        ok = np.ones(evaluations, dtype=bool)
        for c, ct in enumerate(table.cells):
            x = cfg[:, c]
            obj += tables.objective.direction * ct.metric[tables.objective.metric][x]
            for dn in dims:
                cost[dn] += ct.costs[dn][si, x]
            if peak is not None:
                ok &= ct.costs["peak_memory_mb"][si, x] <= peak
            si = ct.out_state[x]
        for dn in dims:
            ok &= cost[dn] <= budgets[dn]
        first = cost[dims[0]] if dims else np.zeros(evaluations)
        for i in np.flatnonzero(ok):
            found.append((float(obj[i]), float(first[i]), [int(v) for v in cfg[i]], di))
    found.sort(key=lambda r: (-r[0], r[1]))
    out = []
    for _, _, cfgs, di in found[: top_k + 3]:
        out.append((_spec_of(space, tables.tables[di], cfgs), tables.tables[di].deployment))
    return out, evaluations * len(tables.tables)
