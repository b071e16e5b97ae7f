"""Fit cost models on a handful of small models really measured with onnxruntime (one thread),
timed directly in this process by ``benchmarks/direct_timing.py`` (not through the agent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from nnflash.calibration import LinearLatencyModel, RooflineLatencyModel, load_model  # noqa: E402
from nnflash.models.space import get_space  # noqa: E402
from nnflash.models.spec import Cell, DenseSpec  # noqa: E402


def _direct_timing():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "direct_timing.py"
    spec = importlib.util.spec_from_file_location("direct_timing", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


measure_specs = _direct_timing().measure_specs


def _small_specs() -> list[DenseSpec]:
    """Ten small dense networks on 16x16 inputs, spread over depth, width and skips."""
    out = []
    rng = np.random.default_rng(0)
    for i in range(10):
        cells = tuple(
            Cell(int(rng.integers(2, 6)), int(w * rng.integers(1, 4)), int(rng.integers(0, 24))) for w in (8, 16)
        )
        out.append(DenseSpec(cells=cells, input_shape=(3, 16, 16), num_classes=10, seed=i))
    return out


@pytest.mark.integration
def test_fit_on_real_measurements(tmp_path) -> None:
    specs = _small_specs()
    lat = measure_specs(specs, tmp_path / "onnx", threads=1, rounds=3, min_time_s=0.03)
    y = np.array([lat[s.spec_id] for s in specs])
    assert np.all(y > 0)
    train, test = slice(0, 7), slice(7, 10)
    model = RooflineLatencyModel().fit(specs[train], y[train])
    rep = model.report()
    assert all(v > 0 for v in rep["gflops"].values())
    pred = model.predict(specs[test])
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)
    # a loose bound: a shared machine is noisy and seven models are few
    assert np.median(np.abs(pred / y[test] - 1)) < 0.5
    path = model.save(tmp_path / "cost.json", device="local", runtime="onnxruntime", threads=1)
    assert np.array_equal(load_model(path).predict(specs), model.predict(specs))
    LinearLatencyModel().fit(specs, y)
    assert get_space("flash").name == "flash"
