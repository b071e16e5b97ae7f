"""Co-design of a network and the IMC accelerator (search.accelerator)."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.calibration.imc_model import AcceleratorConfig, ImcModel, parse_accelerator
from nnflash.models.metrics import compute_metrics
from nnflash.models.space import get_space
from nnflash.search.accelerator import codesign
from nnflash.search.types import Infeasible, Limits, Objective, SearchError

SPACE = get_space("flash")


def test_designs_meet_the_limits_and_are_best_first() -> None:
    accel = parse_accelerator({"knobs": {"subarray_rows": [64, 128], "adc_bits": [4, 5, 6], "cell_bits": [1, 2]}})
    res = codesign(SPACE, accel, Objective.parse("nn-degree"), Limits(max_area_mm2=25.0), samples=600, top=5)
    assert res.evaluated == 600 * 12 and 0 < res.feasible <= res.evaluated
    objs = [d.objective for d in res.designs]
    assert objs == sorted(objs, reverse=True) and len(res.designs) <= 5
    for d in res.designs:
        assert d.hardware["adc_bits"] >= 5 and d.area_mm2 <= 25.0
        again = ImcModel.shipped(d.hardware).estimate([d.spec])
        assert again["area_mm2"][0] == pytest.approx(d.area_mm2, rel=1e-9)
        assert again["latency_ms"][0] == pytest.approx(d.latency_ms, rel=1e-9)
        assert compute_metrics(d.spec)["nn_degree"] == pytest.approx(d.metric)
    # a looser limit can only find an objective at least as good on the same samples
    loose = codesign(SPACE, accel, Objective.parse("nn-degree"), Limits(max_area_mm2=250.0), samples=600, top=1)
    assert loose.best.objective >= res.best.objective
    assert loose.feasible >= res.feasible


def test_min_adc_bits_and_other_limits() -> None:
    res = codesign(
        SPACE,
        AcceleratorConfig(),
        Objective.parse("nn-mass"),
        Limits(max_latency_ms=5.0, max_params=2e6),
        samples=300,
        min_adc_bits=6,
        top=3,
    )
    assert all(d.hardware["adc_bits"] == 6 and d.latency_ms <= 5.0 and d.params <= 2e6 for d in res.designs)
    assert set(res.knobs) >= {"subarray_rows", "adc_bits", "cell_bits"}
    with pytest.raises(Infeasible, match="meets the limits"):
        codesign(SPACE, AcceleratorConfig(), Objective.parse("nn-degree"), Limits(max_area_mm2=0.01), samples=50)
    with pytest.raises(SearchError, match="max_peak_memory_mb: not available"):
        codesign(SPACE, AcceleratorConfig(), Objective.parse("nn-degree"), Limits(max_peak_memory_mb=1.0), samples=5)
    with pytest.raises(SearchError, match="min_adc_bits"):
        codesign(SPACE, AcceleratorConfig(), Objective.parse("nn-degree"), Limits(), samples=5, min_adc_bits=0)
    assert np.isfinite(res.best.energy_mj) and res.best.to_dict()["spec_id"] == res.best.spec.spec_id
