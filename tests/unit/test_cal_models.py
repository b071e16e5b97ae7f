"""Linear, MACs-only and energy models; persistence errors; compatibility warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnflash.calibration import (
    CostModelError,
    EnergyModel,
    LinearLatencyModel,
    MacsOnlyModel,
    RooflineLatencyModel,
    check_compatible,
    load_model,
)
from nnflash.calibration.synthetic import synthetic_energy, synthetic_latency
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(40, seed=7)
LAT = synthetic_latency(SPECS)


def test_macs_only_recovers_a_line() -> None:
    from nnflash.calibration.features import feature_matrix, feature_names

    macs = feature_matrix(SPECS)[:, feature_names().index("macs_total")]
    y = 2.0 * macs / 1e9 + 0.3
    m = MacsOnlyModel().fit(SPECS, y)
    assert m.ms_per_gmac_ == pytest.approx(2.0, rel=1e-6)
    assert m.intercept_ms_ == pytest.approx(0.3, rel=1e-6)


def test_linear_is_non_negative_and_reasonable() -> None:
    m = LinearLatencyModel().fit(SPECS, LAT)
    assert np.all(m.coef_ >= 0) and m.intercept_ms_ >= 0
    assert m.score(SPECS, LAT)["mape"] < 15
    with pytest.raises(CostModelError, match="unknown feature"):
        LinearLatencyModel(features=["macs_conv", "nope"]).fit(SPECS, LAT)


def test_energy_model_recovers_its_coefficients() -> None:
    en = synthetic_energy(SPECS, LAT, idle_power_w=2.0, pj_per_mac=50.0, pj_per_byte=20.0)
    m = EnergyModel().fit(SPECS, en, latency_ms=LAT)
    assert m.idle_power_w_ == pytest.approx(2.0, rel=1e-3)
    assert m.pj_per_mac_ == pytest.approx(50.0, rel=1e-3)
    assert m.pj_per_byte_ == pytest.approx(20.0, rel=1e-3)
    assert np.allclose(m.predict(SPECS, latency_ms=LAT), en)
    assert m.score(SPECS, en)["within_10"] == 1.0
    assert m.predict_latency(SPECS).shape == (len(SPECS),)
    with pytest.raises(CostModelError, match="latency_ms"):
        EnergyModel().fit(SPECS, en)
    with pytest.raises(CostModelError, match="latency_model"):
        EnergyModel(latency_model="energy").fit(SPECS, en, latency_ms=LAT)


def _saved(tmp_path) -> tuple:
    m = RooflineLatencyModel().fit(SPECS[:20], LAT[:20])
    p = m.save(tmp_path / "cost.json", device="pi3", runtime="onnxruntime", threads=1)
    return m, p


def test_corrupt_and_incompatible_files(tmp_path) -> None:
    m, p = _saved(tmp_path)
    obj = json.loads(p.read_text())
    cases = {
        "not valid JSON": "{ nope",
        "not an nnflash cost model": json.dumps({**obj, "format": "other"}),
        "format version 99 is not supported": json.dumps({**obj, "format_version": 99}),
        "unknown cost-model kind": json.dumps({**obj, "kind": "forest"}),
        "incomplete": json.dumps({k: v for k, v in obj.items() if k != "state"}),
        "corrupt roofline state": json.dumps({**obj, "state": {"kinds": obj["state"]["kinds"]}}),
        "wrong length": json.dumps({**obj, "state": {**obj["state"], "ms_per_gb": [1.0]}}),
        "bad hyper-parameters": json.dumps({**obj, "params": {"colour": 1}}),
        "expected a JSON object": "[1, 2]",
    }
    for i, (msg, text) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(text)
        with pytest.raises(CostModelError, match=msg):
            load_model(bad)
    with pytest.raises(CostModelError, match="no such file"):
        load_model(tmp_path / "missing.json")


def test_check_compatible(tmp_path) -> None:
    m, p = _saved(tmp_path)
    loaded = load_model(p)
    assert check_compatible(loaded, device="pi3", runtime="onnxruntime", threads=1) == []
    assert check_compatible(loaded) == []
    w = check_compatible(loaded, device="pi4", runtime="tflite", threads=4)
    assert len(w) == 3 and "pi3" in w[0] and "tflite" in w[1]
    unfitted_meta = RooflineLatencyModel().fit(SPECS[:10], LAT[:10])
    assert "does not record" in check_compatible(unfitted_meta, device="pi3")[0]


def test_save_to_unwritable_place_is_clear(tmp_path) -> None:
    m = MacsOnlyModel().fit(SPECS, LAT)
    with pytest.raises(CostModelError, match="cannot write"):
        m.save(tmp_path / "no" / "such" / "dir.json")
