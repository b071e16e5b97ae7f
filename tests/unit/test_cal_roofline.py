"""The roofline model recovers known physical parameters from synthetic measurements."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.calibration import CostModelError, RooflineLatencyModel
from nnflash.calibration.features import as_layer_tables, layer_batch
from nnflash.calibration.roofline import expand_ops
from nnflash.calibration.synthetic import DEFAULT_TRUTH, known_roofline, synthetic_latency
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(60, seed=3)


def test_recovers_parameters_of_a_plain_roofline() -> None:
    truth = known_roofline(conv_algorithm="none")
    y = synthetic_latency(SPECS, model=truth)
    m = RooflineLatencyModel(conv_algorithm="none", regularization=0.0).fit(SPECS, y)
    rep = m.report()
    assert rep["conv_algorithm"] == "none"
    assert rep["gflops"]["conv"] == pytest.approx(DEFAULT_TRUTH["gflops"]["conv"], rel=0.05)
    assert rep["train_rmspe"] < 0.5
    assert np.allclose(m.predict(SPECS), y, rtol=0.01)


def test_recovers_blocked_convolutions_and_auto_finds_the_layout() -> None:
    truth = known_roofline(conv_algorithm="nchwc16")
    y = synthetic_latency(SPECS, model=truth)
    m = RooflineLatencyModel(regularization=0.0).fit(SPECS, y)
    rep = m.report()
    assert rep["conv_algorithm"] == "nchwc16"
    assert rep["gflops"]["conv"] == pytest.approx(200.0, rel=0.05)
    assert rep["gflops"]["conv_im2col"] == pytest.approx(120.0, rel=0.1)
    assert m.score(SPECS, y)["within_5"] == 1.0


def test_noisy_measurements_still_predict_held_out_models() -> None:
    y = synthetic_latency(SPECS, noise=0.02, seed=5)
    train, test = SPECS[:25], SPECS[25:]
    m = RooflineLatencyModel().fit(train, y[:25])
    s = m.score(test, synthetic_latency(test))
    assert s["within_10"] >= 0.95
    assert s["spearman"] >= 0.95


def test_blocked_layout_pads_channels() -> None:
    # a conv with 8 output channels costs as much as one with 16 in NCHWc16
    spec_a = get_space("flash").to_spec(np.array([2, 2, 2]), np.array([8, 16, 32]), np.array([0, 0, 0]))
    spec_b = get_space("flash").to_spec(np.array([2, 2, 2]), np.array([16, 16, 32]), np.array([0, 0, 0]))
    oa = expand_ops(layer_batch(as_layer_tables([spec_a])), "nchwc16")
    ob = expand_ops(layer_batch(as_layer_tables([spec_b])), "nchwc16")
    # the stem (3 -> w) and the next conv (w -> w): padded work is identical
    assert oa.gflop[:4].sum() <= ob.gflop[:4].sum()
    plain = expand_ops(layer_batch(as_layer_tables([spec_a])), "none")
    assert oa.gflop.sum() > plain.gflop.sum()


def test_bad_hyper_parameters() -> None:
    y = synthetic_latency(SPECS[:10])
    with pytest.raises(CostModelError, match="conv_algorithm"):
        RooflineLatencyModel(conv_algorithm="winograd").fit(SPECS[:10], y)
    with pytest.raises(CostModelError, match="smoothness"):
        RooflineLatencyModel(smoothness=0.5).fit(SPECS[:10], y)


def test_report_is_physical() -> None:
    m = RooflineLatencyModel().fit(SPECS[:20], synthetic_latency(SPECS[:20]))
    rep = m.report()
    assert set(rep) >= {"gflops", "gbps", "overhead_us_per_op", "constant_ms", "conv_algorithm"}
    assert all(v > 0 for v in rep["gflops"].values())
    assert all(v > 0 for v in rep["gbps"].values())
    assert rep["overhead_us_per_op"] >= 0 and rep["constant_ms"] >= 0
