"""The flash space: exact count, uniform sampling, the candidate generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnflash.models.errors import SpaceError
from nnflash.models.metrics import compute_metrics
from nnflash.models.space import SPACES, CellRange, Space, generate, get_space


def brute_count(space: Space) -> int:
    total = 1
    for cell in space.cells:
        distinct = set()
        for d in cell.depths:
            for w in cell.widths:
                for t in range(cell.tc_max + 1):
                    distinct.add((d, w, tuple(min(t, w * (i - 1)) for i in range(2, d))))
        total *= len(distinct)
    return total


def test_count_is_exact_on_a_small_space():
    small = Space("tiny", (CellRange((1, 2, 3, 4), (2, 3), 5), CellRange((3, 5), (1, 4), 7)))
    assert small.count() == brute_count(small)


def test_flash_space_is_large_enough():
    n = get_space("flash").count()
    assert n >= 63_000_000_000
    assert n == math.prod(c.count() for c in SPACES["flash"].cells)


def test_sampling_is_uniform_over_configurations():
    small = Space("tiny", (CellRange((2, 3, 4), (1, 2), 3),))
    configs = [(d, w, t) for d in (2, 3, 4) for w in (1, 2) for t in range(min(3, w * max(d - 2, 0)) + 1)]
    assert len(configs) == small.count()
    d, w, t = small.sample_arrays(60000, np.random.default_rng(0))
    counts: dict = {}
    for row in zip(d[:, 0], w[:, 0], t[:, 0]):
        counts[tuple(int(x) for x in row)] = counts.get(tuple(int(x) for x in row), 0) + 1
    assert set(counts) == set(configs)
    expected = 60000 / len(configs)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 40  # df = 13; p < 1e-4 beyond this


def test_sample_is_reproducible():
    a = [s.spec_id for s in get_space("flash").sample(5, seed=3)]
    assert a == [s.spec_id for s in get_space("flash").sample(5, seed=3)]


@pytest.mark.parametrize("target", [50.0, 400.0, 700.0])
def test_generator_meets_mass_target_with_distinct_spread_specs(target):
    specs = generate(get_space("flash"), 30, target_mass=target, tolerance=0.02, seed=1)
    assert len({s.spec_id for s in specs}) == 30
    ms = [compute_metrics(s) for s in specs]
    assert all(abs(m["nn_mass"] - target) <= 0.02 * target for m in ms)
    depths = {tuple(c.depth for c in s.cells) for s in specs}
    widths = {tuple(c.width for c in s.cells) for s in specs}
    assert len(depths) > 15 and len(widths) > 10  # spread, not near-copies
    params = [m["params"] for m in ms]
    assert max(params) > 2 * min(params)


def test_generator_degree_target_and_budgets():
    specs = generate(
        get_space("flash"), 20, target_degree=200, tolerance=0.05, max_params=400_000, max_macs=60_000_000, seed=2
    )
    for s in specs:
        m = compute_metrics(s)
        assert abs(m["nn_degree"] - 200) <= 10 and m["params"] <= 400_000 and m["macs"] <= 60_000_000


def test_generator_errors_are_clear():
    with pytest.raises(SpaceError, match="outside what space"):
        generate(get_space("flash"), 5, target_mass=5000)
    with pytest.raises(SpaceError, match="only .* distinct configurations"):
        generate(get_space("flash"), 5, target_mass=800, max_params=20_000, max_batches=3)
    with pytest.raises(SpaceError, match="exactly one"):
        generate(get_space("flash"), 5)
    with pytest.raises(SpaceError, match="unknown space"):
        get_space("nasbench")
