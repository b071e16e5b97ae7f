"""Non-dominated sets: maximize one objective, minimize any number of costs.

Exact, with no tolerance. One cost: a sort and a running maximum. Several: a sweep in order of
objective descending (then each cost ascending, exact duplicates collapsed), where a point is
dominated exactly when a point before it is at most as costly in every cost; with two costs the
points kept so far are summarized by their 2-D staircase, so each point is one binary search
(``O(n log n)``); with more, blocks of points are compared with the kept points, strongest
dominators first. :func:`front_layers` peels ``K`` such fronts for the exact top ``K``.
"""

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


def _sweep_order(obj: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points sorted by objective descending, then each cost ascending, with exact duplicates
    collapsed: ``(order, first, group)`` where ``order[first]`` are the distinct points in that
    order and ``group[i]`` is the distinct point of ``order[i]``. In this order nothing dominates a
    point from behind it (a later point has a lower objective, or an equal objective and a higher
    first differing cost), so a distinct point is dominated exactly when an earlier distinct point
    is at most as costly in every cost (it differs from it, and its objective is at least as high)."""
    keys = [cost[:, j] for j in range(cost.shape[1] - 1, -1, -1)]
    order = np.lexsort((*keys, -obj))
    o, c = obj[order], cost[order]
    diff = np.ones(len(o), dtype=bool)
    diff[1:] = (o[1:] != o[:-1]) | np.any(c[1:] != c[:-1], axis=1)
    first = np.flatnonzero(diff)
    group = np.cumsum(diff) - 1
    return order, first, group


def _staircase_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``(a, b)`` no other point is at most as high in both, as ``a`` ascending with
    ``b`` strictly descending: the lowest ``b`` among points with ``a <= x`` is ``b`` at the last
    position with ``a <= x``."""
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    before = np.concatenate([[np.inf], np.minimum.accumulate(b)[:-1]])
    keep = b < before
    return a[keep], b[keep]


def _all_le(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``[i, j]``: every cost of ``p[i]`` at most that of ``q[j]`` (one 2-D comparison per cost)."""
    le = p[:, 0, None] <= q[None, :, 0]
    for j in range(1, p.shape[1]):
        le &= p[:, j, None] <= q[None, :, j]
    return le


def _dominated_sorted(c: np.ndarray) -> np.ndarray:
    """For distinct points in sweep order (:func:`_sweep_order`), whether an earlier point is at
    most as costly in every cost. Blocks of the order are tested against the points kept before
    them (enough: a dominated dominator is itself dominated by a kept point) and then among the
    block's own survivors. With two costs the kept points are summarized by their staircase (a
    binary search per point, ``O(n log n)`` in all), with more by a blockwise comparison."""
    n, k = c.shape
    dom = np.zeros(n, dtype=bool)
    sa, sb = np.zeros(0), np.zeros(0)  # two costs: the staircase of the kept points
    kept = np.zeros((0, k))
    spread = c.max(axis=0) - c.min(axis=0) if n else np.ones(k)
    scale = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    for a in range(0, n, _BLOCK):
        bc = c[a : a + _BLOCK]
        d = np.zeros(len(bc), dtype=bool)
        if k == 2 and len(sa):
            pos = np.searchsorted(sa, bc[:, 0], side="right") - 1
            d = (pos >= 0) & (sb[np.maximum(pos, 0)] <= bc[:, 1])
        elif k > 2:
            for s in range(0, len(kept), _BLOCK):
                left = np.flatnonzero(~d)
                if not len(left):
                    break
                d[left] |= _all_le(kept[s : s + _BLOCK], bc[left]).any(axis=0)
        live = np.flatnonzero(~d)
        if len(live) > 1:  # within the block: only earlier survivors can dominate
            x = bc[live]
            d[live] = np.triu(_all_le(x, x), 1).any(axis=0)
        dom[a : a + len(bc)] = d
        new = bc[~d]
        if not len(new):
            continue
        if k == 2:
            sa, sb = _staircase_2d(np.concatenate([sa, new[:, 0]]), np.concatenate([sb, new[:, 1]]))
        else:  # the strongest dominators (lowest costs, relative to their spread) first
            kept = np.concatenate([kept, new])
            kept = kept[np.argsort((kept / scale).sum(axis=1), kind="stable")]
    return dom


def _nondominated_kd(obj: np.ndarray, cost: np.ndarray) -> np.ndarray:
    order, first, group = _sweep_order(obj, cost)
    dom = _dominated_sorted(cost[order][first])
    out = np.zeros(len(obj), dtype=bool)
    out[order] = ~dom[group]
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
