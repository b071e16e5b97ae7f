"""Non-dominated sets: maximize one objective, minimize any number of costs."""

from __future__ import annotations

import numpy as np

_BLOCK = 512


def _nondominated_1d(obj: np.ndarray, cost: np.ndarray) -> np.ndarray:
    order = np.argsort(cost)
    o, c = obj[order], cost[order]
    n = len(o)
    # groups of equal cost: only their best objective survives (identical points all survive)
    start = np.flatnonzero(np.concatenate([[True], c[1:] != c[:-1]]))
    gmax = np.maximum.reduceat(o, start)
    before = np.concatenate([[-np.inf], np.maximum.accumulate(gmax)[:-1]])
    size = np.diff(np.concatenate([start, [n]]))
    keep = (o == np.repeat(gmax, size)) & (o > np.repeat(before, size))
    out = np.zeros(n, dtype=bool)
    out[order] = keep
    return out


def _nondominated_kd(obj: np.ndarray, cost: np.ndarray) -> np.ndarray:
    n = len(obj)
    order = np.lexsort((cost.sum(axis=1), -obj))  # objective descending, then total cost ascending
    o, c = obj[order], cost[order]
    keep = np.zeros(n, dtype=bool)
    kept_o = np.zeros(0)
    kept_c = np.zeros((0, cost.shape[1]))
    for a in range(0, n, _BLOCK):
        bo, bc = o[a : a + _BLOCK], c[a : a + _BLOCK]
        dom = np.zeros(len(bo), dtype=bool)
        if len(kept_o):
            le = np.all(kept_c[:, None, :] <= bc[None, :, :], axis=2)
            strict = (kept_o[:, None] > bo[None, :]) | np.any(kept_c[:, None, :] < bc[None, :, :], axis=2)
            dom = np.any(le & strict & (kept_o[:, None] >= bo[None, :]), axis=0)
        # within the block only earlier points can dominate (see the sort)
        le = np.all(bc[:, None, :] <= bc[None, :, :], axis=2)
        strict = (bo[:, None] > bo[None, :]) | np.any(bc[:, None, :] < bc[None, :, :], axis=2)
        dom |= np.any(le & strict & (bo[:, None] >= bo[None, :]), axis=0)
        keep[a : a + _BLOCK] = ~dom
        kept_o = np.concatenate([kept_o, bo[~dom]])
        kept_c = np.concatenate([kept_c, bc[~dom]])
    out = np.zeros(n, dtype=bool)
    out[order] = keep
    return out


def nondominated(obj: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Mask of the points no other point dominates (objective at least as high and every cost at
    most as high, one of them strictly); identical points are all kept. ``cost`` is ``(n, k)``."""
    obj = np.asarray(obj, dtype=np.float64)
    n = len(obj)
    if n == 0:
        return np.zeros(0, dtype=bool)
    k = cost.shape[1]
    if k == 0:
        return obj == obj.max()
    if k == 1:
        return _nondominated_1d(obj, cost[:, 0])
    return _nondominated_kd(obj, cost)


def front_layers(obj: np.ndarray, cost: np.ndarray, layers: int) -> np.ndarray:
    """Mask of the points in the first ``layers`` non-dominated layers. A point in a later layer
    is dominated by at least ``layers`` others (one per earlier layer, a chain), so these points
    hold the ``layers`` best of every merge that adds the same terms to each (the exact top-K)."""
    n = len(obj)
    out = np.zeros(n, dtype=bool)
    left = np.arange(n)
    for _ in range(layers):
        if not len(left):
            break
        nd = nondominated(obj[left], cost[left])
        out[left[nd]] = True
        left = left[~nd]
    return out


_BINS = 128


def _staircases(obj: np.ndarray, c1: np.ndarray, layers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``layers`` 1-D fronts of ``(obj, c1)`` as (sorted c1, running max obj)."""
    out = []
    left = np.arange(len(obj))
    for _ in range(layers):
        if not len(left):
            break
        nd = _nondominated_1d(obj[left], c1[left])
        f = left[nd]
        order = np.argsort(c1[f])
        out.append((c1[f][order], np.maximum.accumulate(obj[f][order])))
        left = left[~nd]
    return out


def prune(obj: np.ndarray, cost: np.ndarray, layers: int) -> np.ndarray:
    """A mask that drops only points dominated by at least ``layers`` others (so it keeps the
    exact top ``layers`` of every merge, like :func:`front_layers`), fast for two costs: the points
    are binned by the second cost, so that across bins a point can only be dominated by points of
    lower bins (a staircase lookup on the first cost against each of the lower bins' ``layers``
    fronts: ``layers`` distinct dominators), and within its bin by the exact blockwise test."""
    n = len(obj)
    if cost.shape[1] == 3 and n > 4 * _BLOCK:
        return _prune_3(obj, cost, layers)
    if cost.shape[1] != 2 or n <= 4 * _BLOCK:
        return front_layers(obj, cost, layers)
    c1, c2 = cost[:, 0], cost[:, 1]
    nbins = max(_BINS, n // 256)  # bins of a few hundred points: the blockwise test is quadratic
    edges = np.unique(np.quantile(c2, np.linspace(0, 1, nbins + 1)[1:-1]))
    b = np.searchsorted(edges, c2, side="right")  # lower bins have strictly lower c2
    out = np.zeros(n, dtype=bool)
    seen = np.zeros(0, dtype=np.int64)  # kept points of the lower bins
    for bi in range(len(edges) + 1):
        sel = np.flatnonzero(b == bi)
        if not len(sel):
            continue
        keep = front_layers(obj[sel], cost[sel], layers)
        if len(seen):
            dominated = np.ones(len(sel), dtype=bool)
            stairs = _staircases(obj[seen], c1[seen], layers)
            if len(stairs) < layers:
                dominated[:] = False
            for sc1, sbest in stairs:
                pos = np.searchsorted(sc1, c1[sel], side="right") - 1
                dominated &= (pos >= 0) & (sbest[np.maximum(pos, 0)] >= obj[sel])
            keep &= ~dominated
        out[sel[keep]] = True
        seen = np.concatenate([seen, sel[keep]])
        if len(seen) > 8 * _BLOCK:  # only the lower bins' fronts matter for later lookups
            st = np.zeros(len(seen), dtype=bool)
            left = np.arange(len(seen))
            for _ in range(layers):
                nd = _nondominated_1d(obj[seen[left]], c1[seen[left]])
                st[left[nd]] = True
                left = left[~nd]
            seen = seen[st]
    return out


_GRID = 24


def _layer_points(idx: np.ndarray, obj: np.ndarray, c1: np.ndarray, layers: int) -> np.ndarray:
    """The points of ``idx`` in the first ``layers`` 1-D fronts of ``(obj, c1)``."""
    keep = np.zeros(len(idx), dtype=bool)
    left = np.arange(len(idx))
    for _ in range(layers):
        if not len(left):
            break
        nd = _nondominated_1d(obj[idx[left]], c1[idx[left]])
        keep[left[nd]] = True
        left = left[~nd]
    return idx[keep]


def _prune_3(obj: np.ndarray, cost: np.ndarray, layers: int) -> np.ndarray:
    """:func:`prune` for three costs: a grid over the second and third costs; a point can be
    dominated across cells of the grid by points of cells strictly lower in both (a staircase
    lookup on the first cost against the lower-left region's ``layers`` fronts, built by the
    recurrence region(a, b) = region(a-1, b) + region(a, b-1) + cell(a-1, b-1)), and within its
    cell by the exact blockwise test. Points dominated only from the same row or column stay."""
    n = len(obj)
    c1 = cost[:, 0]
    bins = []
    grid = max(_GRID, int(np.sqrt(n / 256)))  # cells of a few hundred points
    for j in (1, 2):
        edges = np.unique(np.quantile(cost[:, j], np.linspace(0, 1, grid + 1)[1:-1]))
        bins.append((np.searchsorted(edges, cost[:, j], side="right"), len(edges) + 1))
    (ba, na), (bb, nb) = bins
    cell_id = ba * nb + bb
    order = np.argsort(cell_id, kind="stable")
    bounds = np.searchsorted(cell_id[order], np.arange(na * nb + 1))
    out = np.zeros(n, dtype=bool)
    kept: dict[tuple[int, int], np.ndarray] = {}
    region: dict[tuple[int, int], np.ndarray] = {}
    empty = np.zeros(0, dtype=np.int64)
    for a in range(na):
        for b in range(nb):
            # the fronts of the points strictly lower in both binned costs
            parts = [region.get((a - 1, b), empty), region.get((a, b - 1), empty), kept.get((a - 1, b - 1), empty)]
            reg = np.unique(np.concatenate(parts))
            region[(a, b)] = _layer_points(reg, obj, c1, layers) if len(reg) else empty
            sel = order[bounds[a * nb + b] : bounds[a * nb + b + 1]]
            if not len(sel):
                kept[(a, b)] = empty
                continue
            keep = front_layers(obj[sel], cost[sel], layers)
            ref = region[(a, b)]
            if len(ref):
                stairs = _staircases(obj[ref], c1[ref], layers)
                if len(stairs) == layers:
                    dominated = np.ones(len(sel), dtype=bool)
                    for sc1, sbest in stairs:
                        pos = np.searchsorted(sc1, c1[sel], side="right") - 1
                        dominated &= (pos >= 0) & (sbest[np.maximum(pos, 0)] >= obj[sel])
                    keep &= ~dominated
            kept[(a, b)] = sel[keep]
            out[sel[keep]] = True
    return out
