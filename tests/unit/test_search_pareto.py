"""The non-dominated sets the exact method prunes with, against the definition."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.search.pareto import front_layers, nondominated


def _brute(obj: np.ndarray, cost: np.ndarray) -> np.ndarray:
    ge = obj[:, None] >= obj[None, :]
    le = np.all(cost[:, None, :] <= cost[None, :, :], axis=2)
    strict = (obj[:, None] > obj[None, :]) | np.any(cost[:, None, :] < cost[None, :, :], axis=2)
    return ~np.any(ge & le & strict, axis=0)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_nondominated_and_layers_match_the_definition(k: int) -> None:
    rng = np.random.default_rng(k)
    for n in (1, 2, 7, 300, 1500):  # 1500 spans several sweep blocks
        # few distinct values: ties in the objective, in each cost and exact duplicates
        obj = rng.integers(0, 9, n).astype(float)
        cost = rng.integers(0, 7, (n, k)).astype(float)
        want = _brute(obj, cost)
        np.testing.assert_array_equal(nondominated(obj, cost), want)
        left, layers = np.arange(n), np.zeros(n, dtype=bool)
        for depth in range(1, 4):
            nd = _brute(obj[left], cost[left])
            layers[left[nd]] = True
            left = left[~nd]
            np.testing.assert_array_equal(front_layers(obj, cost, depth), layers)


def test_nondominated_with_infinite_and_continuous_costs() -> None:
    rng = np.random.default_rng(5)
    obj = rng.random(2000).round(2)
    cost = rng.random((2000, 3))
    cost[::97, 1] = np.inf
    np.testing.assert_array_equal(nondominated(obj, cost), _brute(obj, cost))
    np.testing.assert_array_equal(nondominated(obj, cost[:, :2]), _brute(obj, cost[:, :2]))
