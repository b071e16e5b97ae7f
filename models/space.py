"""Named search spaces of dense-family networks, uniform sampling, and the candidate generator.

The ``flash`` space (ours; FLASH's own space has more than 63 billion configurations and this one
is of the same kind): three cells of the NN-Mass paper's DenseNet-type CNN on 32x32x3 inputs,
10 classes, regular 3x3 convolutions.

======  ==============  =====================  ============
cell    depth           width                  skip cap tc
======  ==============  =====================  ============
0       2..12           8, 16, ..., 48         0..48
1       2..12           16, 32, ..., 96        0..96
2       2..12           32, 64, ..., 192       0..192
======  ==============  =====================  ============

Only *distinct* networks are counted: a cap above ``w*(d-2)`` (the most long-range channels any
layer of the cell can draw from) wires the cell exactly like ``tc = w*(d-2)``, so for each
``(depth, width)`` the cap runs over ``0..min(tc_max, w*(d-2))`` (just ``0`` when ``d < 3``). The
count is the product over cells of ``sum_{d,w} (min(tc_max, w*(d-2)) + 1)``.

``flash-depthwise`` is the same grid with depthwise-separable layers.

``flash-fmnist`` is the default space of the 1x28x28 datasets (Fashion-MNIST, MNIST): the same
three-cell network, smaller, sized so that the ``quick`` training protocol trains a median network
in about a minute on a 2-core CPU (median about 8M MACs; sampled networks trained at 700-2,200
images/s there, median about 1,000).

======  ==============  =====================  ============
cell    depth           width                  skip cap tc
======  ==============  =====================  ============
0       2..6            4, 6, ..., 12          0..12
1       2..6            8, 12, ..., 24         0..24
2       2..6            16, 24, ..., 48        0..48
======  ==============  =====================  ============
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from nnflash.models.errors import SpaceError
from nnflash.models.metrics import dense_params_macs, nn_degree, nn_mass, skip_sum
from nnflash.models.nb201 import EDGES as NB201_EDGES
from nnflash.models.nb201 import OPS as NB201_OPS
from nnflash.models.nb201 import Nb201Spec, arch_from_index, arch_string
from nnflash.models.spec import Cell, DenseSpec


@dataclass(frozen=True)
class CellRange:
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    tc_max: int

    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (depth, width) pair and its number of distinct caps."""
        d, w = np.meshgrid(np.array(self.depths), np.array(self.widths), indexing="ij")
        d, w = d.ravel().astype(np.int64), w.ravel().astype(np.int64)
        n_tc = np.minimum(self.tc_max, w * np.maximum(d - 2, 0)) + 1
        return d, w, n_tc

    def count(self) -> int:
        return int(sum(int(x) for x in self.grid()[2]))


@dataclass(frozen=True)
class Space:
    name: str
    cells: tuple[CellRange, ...]
    conv: str = "regular"
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10

    def count(self) -> int:
        """Exact number of distinct configurations (a Python int, no overflow)."""
        return math.prod(c.count() for c in self.cells)

    def describe(self) -> list[dict]:
        return [
            {
                "cell": i,
                "depths": [min(c.depths), max(c.depths)],
                "widths": list(c.widths),
                "tc": [0, c.tc_max],
                "configurations": c.count(),
            }
            for i, c in enumerate(self.cells)
        ]

    # ---------------------------------------------------------------- sampling

    def sample_arrays(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` configurations drawn uniformly from the distinct configurations of the space."""
        cols = [self._sample_cell(c, n, rng, uniform_configs=True) for c in self.cells]
        return tuple(np.stack([col[k] for col in cols], axis=1) for k in range(3))  # type: ignore[return-value]

    def _sample_cell(
        self, cell: CellRange, n: int, rng: np.random.Generator, uniform_configs: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, w, n_tc = cell.grid()
        if uniform_configs:  # weight each (d, w) by its number of caps: uniform over configurations
            cum = np.cumsum(n_tc)
            pick = np.searchsorted(cum, rng.integers(0, cum[-1], size=n), side="right")
        else:  # uniform over the (d, w) grid: spreads the generator across sizes
            pick = rng.integers(0, len(d), size=n)
        tc = (rng.random(n) * n_tc[pick]).astype(np.int64)
        return d[pick], w[pick], tc

    def to_spec(self, depth: np.ndarray, width: np.ndarray, tc: np.ndarray, seed: int = 0) -> DenseSpec:
        return DenseSpec(
            cells=tuple(Cell(int(a), int(b), int(c)) for a, b, c in zip(depth, width, tc)),
            conv=self.conv,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            seed=seed,
        )

    def sample(self, n: int, seed: int = 0) -> list[DenseSpec]:
        rng = np.random.default_rng(seed)
        d, w, t = self.sample_arrays(n, rng)
        return [self.to_spec(d[i], w[i], t[i], seed=seed) for i in range(n)]

    def metrics(self, d: np.ndarray, w: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        params, macs = dense_params_macs(
            d, w, t, conv=self.conv, input_shape=self.input_shape, num_classes=self.num_classes
        )
        return {"nn_mass": nn_mass(d, w, t), "nn_degree": nn_degree(d, w, t), "params": params, "macs": macs}

    def metric_range(self, metric: str) -> tuple[float, float]:
        """Smallest and largest value of ``nn_mass`` or ``nn_degree`` over the space (exact)."""
        lo = hi = 0.0
        for cell in self.cells:
            d, w, n_tc = cell.grid()
            t_max = n_tc - 1
            if metric == "nn_mass":
                vals_hi = nn_mass(d[:, None], w[:, None], t_max[:, None])
                vals_lo = np.zeros_like(vals_hi)
            else:
                vals_hi = nn_degree(d[:, None], w[:, None], t_max[:, None])
                vals_lo = nn_degree(d[:, None], w[:, None], np.zeros_like(t_max)[:, None])
            lo += float(vals_lo.min())
            hi += float(vals_hi.max())
        return lo, hi


SPACES: dict[str, Space] = {
    "flash": Space(
        "flash",
        (
            CellRange(tuple(range(2, 13)), tuple(range(8, 49, 8)), 48),
            CellRange(tuple(range(2, 13)), tuple(range(16, 97, 16)), 96),
            CellRange(tuple(range(2, 13)), tuple(range(32, 193, 32)), 192),
        ),
    ),
}
SPACES["flash-depthwise"] = Space("flash-depthwise", SPACES["flash"].cells, conv="depthwise")
SPACES["flash-fmnist"] = Space(
    "flash-fmnist",
    (
        CellRange(tuple(range(2, 7)), tuple(range(4, 13, 2)), 12),
        CellRange(tuple(range(2, 7)), tuple(range(8, 25, 4)), 24),
        CellRange(tuple(range(2, 7)), tuple(range(16, 49, 8)), 48),
    ),
    input_shape=(1, 28, 28),
)


@dataclass(frozen=True)
class Nb201Space:
    """NAS-Bench-201's topology space: every operation of :data:`nnflash.models.nb201.OPS` on each
    of the 6 edges of the cell, in the CIFAR skeleton (``models.nb201``). 5^6 = 15,625
    configurations; isomorphic cells (and cells that differ only on dead edges) are **not** merged,
    every architecture string counts once, as in NAS-Bench-201."""

    name: str = "nb201"
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    channels: int = 16
    cells_per_stage: int = 5
    conv: str = "nb201 cell"

    def count(self) -> int:
        return len(NB201_OPS) ** len(NB201_EDGES)

    def describe(self) -> list[dict]:
        return [
            {"edge": f"{j}->{i}", "operations": list(NB201_OPS), "configurations": len(NB201_OPS)}
            for i, j in NB201_EDGES
        ]

    def to_spec(self, index: int) -> Nb201Spec:
        return Nb201Spec(
            arch=arch_string(arch_from_index(int(index))),
            channels=self.channels,
            cells_per_stage=self.cells_per_stage,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
        )

    def all_specs(self) -> list[Nb201Spec]:
        """Every configuration, in nnflash's enumeration order (:func:`arch_from_index`)."""
        return [self.to_spec(i) for i in range(self.count())]

    def sample(self, n: int, seed: int = 0) -> list[Nb201Spec]:
        """``n`` configurations drawn uniformly; distinct while ``n`` is at most the space's size."""
        rng = np.random.default_rng(seed)
        total = self.count()
        idx = rng.choice(total, size=n, replace=n > total)
        return [self.to_spec(int(i)) for i in idx]


#: Every named space: the dense-family grids and NAS-Bench-201's cell space.
AnySpace = Union[Space, Nb201Space]
ALL_SPACES: dict[str, AnySpace] = {**SPACES, "nb201": Nb201Space()}


def get_space(name: str) -> AnySpace:
    """A named space; ``nb201`` is NAS-Bench-201's (:class:`Nb201Space`), every other a dense grid."""
    if name not in ALL_SPACES:
        raise SpaceError(f"space: unknown space {name!r} (known: {', '.join(sorted(ALL_SPACES))})")
    return ALL_SPACES[name]


# ---------------------------------------------------------------------------- the generator


def _cell_metric(metric: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Per-cell contribution to the metric, elementwise (both metrics are sums over cells)."""
    if metric == "nn_mass":

        def f(d: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
            poss = w * np.maximum(d - 1, 0) * np.maximum(d - 2, 0) / 2
            return np.where(poss > 0, skip_sum(d, w, t) / np.maximum(poss, 1), 0.0) * w * d
    else:

        def f(d: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
            return w + skip_sum(d, w, t) / d

    return f


def farthest_points(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` rows of ``x`` chosen greedily to be far apart (farthest-point sampling)."""
    first = int(rng.integers(len(x)))
    chosen = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return np.array(chosen)


def generate(
    space: AnySpace,
    n: int,
    *,
    target_mass: float | None = None,
    target_degree: float | None = None,
    tolerance: float = 0.02,
    max_params: int | None = None,
    max_macs: int | None = None,
    seed: int = 0,
    batch: int = 20000,
    max_batches: int = 40,
) -> list[DenseSpec]:
    """``n`` distinct specs of ``space`` whose NN-Mass (or NN-Degree) is within ``tolerance``
    (relative) of the target and that meet the optional parameter and MAC budgets.

    Candidates are drawn across the whole (depth, width) grid of every cell; one randomly chosen cell
    per candidate gets the skip cap that brings the total closest to the target. From the feasible
    pool, farthest-point sampling over normalized (depth, width, cap) picks ``n`` that are spread
    across the space rather than near-copies. Raises ``SpaceError`` when the space cannot meet the
    request.
    """
    if not isinstance(space, Space):
        raise SpaceError(
            f"space {space.name!r}: generating by NN-Mass or NN-Degree needs a dense-family space "
            f"({', '.join(sorted(SPACES))}); sample it instead"
        )
    if (target_mass is None) == (target_degree is None):
        raise SpaceError("give exactly one of a target NN-Mass or a target NN-Degree")
    if n < 1:
        raise SpaceError(f"n: must be a positive integer, got {n}")
    if not (0 < tolerance < 1):
        raise SpaceError(f"tolerance: must be in (0, 1), got {tolerance}")
    metric = "nn_mass" if target_mass is not None else "nn_degree"
    target = float(target_mass if target_mass is not None else target_degree)  # type: ignore[arg-type]
    if not math.isfinite(target) or target <= 0:
        raise SpaceError(f"target {metric}: must be a positive number, got {target}")
    lo, hi = space.metric_range(metric)
    if target * (1 + tolerance) < lo or target * (1 - tolerance) > hi:
        raise SpaceError(
            f"target {metric} {target:g} is outside what space {space.name!r} can reach ({lo:.4g} .. {hi:.4g})"
        )
    rng = np.random.default_rng(seed)
    f = _cell_metric(metric)
    ncell = len(space.cells)
    t_cap = max(c.tc_max for c in space.cells)
    taus = np.arange(t_cap + 1)
    pool: dict[tuple[int, ...], np.ndarray] = {}
    want_pool = max(8 * n, 400)
    for _ in range(max_batches):
        cols = [space._sample_cell(c, batch, rng, uniform_configs=False) for c in space.cells]
        d = np.stack([c[0] for c in cols], 1)
        w = np.stack([c[1] for c in cols], 1)
        t = np.stack([c[2] for c in cols], 1)
        contrib = f(d, w, t)
        j = rng.integers(0, ncell, size=batch)
        rows = np.arange(batch)
        rest = contrib.sum(1) - contrib[rows, j]
        dj, wj = d[rows, j], w[rows, j]
        tmax_j = np.minimum(np.array([c.tc_max for c in space.cells])[j], wj * np.maximum(dj - 2, 0))
        cand = f(dj[:, None], wj[:, None], np.minimum(taus[None, :], tmax_j[:, None]))
        err = np.abs(rest[:, None] + cand - target)
        err[taus[None, :] > tmax_j[:, None]] = np.inf
        t[rows, j] = np.argmin(err, axis=1)
        value = f(d, w, t).sum(1)
        ok = np.abs(value - target) <= tolerance * target
        if max_params is not None or max_macs is not None:
            params, macs = dense_params_macs(
                d, w, t, conv=space.conv, input_shape=space.input_shape, num_classes=space.num_classes
            )
            if max_params is not None:
                ok &= params <= max_params
            if max_macs is not None:
                ok &= macs <= max_macs
        for i in np.flatnonzero(ok):
            key = tuple(int(x) for x in np.concatenate([d[i], w[i], t[i]]))
            if key not in pool:
                pool[key] = np.concatenate([d[i], w[i], t[i]])
        if len(pool) >= want_pool:
            break
    if len(pool) < n:
        budgets = []
        if max_params is not None:
            budgets.append(f"max params {max_params:,}")
        if max_macs is not None:
            budgets.append(f"max MACs {max_macs:,}")
        extra = f" under {' and '.join(budgets)}" if budgets else ""
        raise SpaceError(
            f"space {space.name!r} has only {len(pool)} distinct configurations found with {metric} "
            f"within {tolerance:.1%} of {target:g}{extra}; asked for {n} "
            f"(widen the tolerance or relax the budgets)"
        )
    configs = np.array(list(pool.values()), dtype=np.int64)
    span = configs.max(0) - configs.min(0)
    normed = (configs - configs.min(0)) / np.where(span > 0, span, 1)
    pick = farthest_points(normed, n, rng)
    return [space.to_spec(c[:ncell], c[ncell : 2 * ncell], c[2 * ncell :], seed=seed) for c in configs[pick]]
