"""Choosing what to measure."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.calibration import CostModelError, RooflineLatencyModel
from nnflash.calibration.features import feature_matrix, feature_names
from nnflash.calibration.select import cover, most_uncertain, plan_budget, select_specs, selection_vectors
from nnflash.calibration.synthetic import synthetic_latency
from nnflash.models.space import get_space

POOL = get_space("flash").sample(400, seed=9)


def test_cover_is_deterministic_distinct_and_takes_the_extremes() -> None:
    a = cover(POOL, 15, seed=1)
    assert a == cover(POOL, 15, seed=1)
    assert len(set(a)) == 15
    macs = feature_matrix(POOL)[:, feature_names().index("macs_total")]
    assert int(np.argmin(macs)) in a and int(np.argmax(macs)) in a


def test_cover_spreads_better_than_random() -> None:
    v = selection_vectors(POOL)
    v = (v - v.min(0)) / np.where(np.ptp(v, 0) > 0, np.ptp(v, 0), 1)

    def coverage_radius(idx: list[int]) -> float:
        d = np.linalg.norm(v[:, None, :] - v[None, idx, :], axis=2).min(1)
        return float(d.max())

    chosen = cover(POOL, 20, seed=0)
    rnd = np.random.default_rng(0).choice(len(POOL), 20, replace=False).tolist()
    assert coverage_radius(chosen) < coverage_radius(rnd)


def test_errors() -> None:
    with pytest.raises(CostModelError, match="budget"):
        cover(POOL[:5], 6)
    with pytest.raises(CostModelError, match="budget"):
        cover(POOL, 0)
    with pytest.raises(CostModelError):
        plan_budget(0)


def test_plan_budget_adds_up() -> None:
    for b in (1, 5, 8, 10, 25, 50):
        steps = plan_budget(b)
        assert sum(steps) == b and steps[0] >= 1
    assert plan_budget(25) == [15, 5, 5]


def test_active_step_picks_uncertain_distinct_points() -> None:
    train = [POOL[i] for i in cover(POOL, 10, seed=0)]
    y = synthetic_latency(train, noise=0.05, seed=2)
    rest = [s for s in POOL if s not in train][:150]
    pick = most_uncertain(RooflineLatencyModel, train, y, rest, 5, n_boot=4, seed=3)
    assert len(set(pick)) == 5
    assert pick == most_uncertain(RooflineLatencyModel, train, y, rest, 5, n_boot=4, seed=3)


def test_select_loop_measures_each_round_once() -> None:
    calls: list[int] = []

    def measure(specs: list) -> list[float]:
        calls.append(len(specs))
        return list(synthetic_latency(specs))

    chosen, y = select_specs(POOL[:200], 10, seed=0, measure=measure)
    assert len(chosen) == 10 == len(y) and sum(calls) == 10 and len(calls) == 3
    assert len({s.spec_id for s in chosen}) == 10
    only, none = select_specs(POOL[:200], 6, seed=0)
    assert len(only) == 6 and none == []
