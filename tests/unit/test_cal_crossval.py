"""Report metrics, cross-validation and the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnflash.calibration import CostModelError, MacsOnlyModel, cross_validate, report_metrics
from nnflash.calibration.crossval import format_metrics, kfold_indices, leave_one_out, plot_predicted_vs_measured
from nnflash.calibration.synthetic import synthetic_latency
from nnflash.models.space import get_space


def test_metrics_by_hand() -> None:
    y = np.array([1.0, 2.0, 4.0, 8.0])
    p = np.array([1.04, 2.2, 4.0, 6.0])  # errors 4%, 10%, 0%, -25%
    m = report_metrics(y, p)
    assert m["mape"] == pytest.approx(100 * (0.04 + 0.10 + 0 + 0.25) / 4)
    assert m["rmspe"] == pytest.approx(100 * math.sqrt((0.04**2 + 0.1**2 + 0.25**2) / 4))
    assert m["within_5"] == 0.5
    assert m["within_10"] == 0.75
    assert m["spearman"] == pytest.approx(1.0)
    assert m["n"] == 4
    assert "within 10% 75%" in format_metrics(m)
    assert math.isnan(report_metrics([1.0, 2.0], [1.0, 2.0])["spearman"])
    with pytest.raises(CostModelError):
        report_metrics([1.0, -1.0], [1.0, 1.0])
    with pytest.raises(CostModelError):
        report_metrics([1.0], [1.0, 2.0])


def test_folds_partition_the_samples() -> None:
    folds = kfold_indices(11, 3, seed=1)
    assert len(folds) == 3
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(11))
    for train, test in folds:
        assert not set(train) & set(test)
    assert len(kfold_indices(5, 10)) == 5  # k >= n: leave-one-out
    assert kfold_indices(11, 3, seed=1)[0][1].tolist() == folds[0][1].tolist()
    with pytest.raises(CostModelError):
        kfold_indices(1, 2)


def test_cross_validate_and_loo() -> None:
    specs = get_space("flash").sample(12, seed=4)
    y = synthetic_latency(specs)
    m = cross_validate(MacsOnlyModel, specs, y, k=4)
    assert m["n"] == 12 and m["folds"] == 4
    loo = leave_one_out(MacsOnlyModel, specs, y)
    assert loo["folds"] == 12


def test_plot_writes_a_png(tmp_path) -> None:
    path = plot_predicted_vs_measured(
        [1.0, 2.0, 3.0], [1.1, 1.9, 3.2], tmp_path / "p.png", labels={"other": ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])}
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
