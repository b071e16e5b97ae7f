"""What the predictors promise beyond the contract: monotone curves, cross-validation on real
trainings, uncertainty, and a selection spread over NN-Degree and size."""

from __future__ import annotations

import numpy as np
import pytest
from accuracy_fixture import fixture_proxies, fixture_specs_and_accuracy

from nnflash.calibration.accuracy import (
    AccuracyModelError,
    accuracy_metrics,
    cross_validate_accuracy,
    make_accuracy_model,
    plot_predicted_vs_trained,
    rank_correlations,
    select_for_training,
    spec_features,
)
from nnflash.models.space import get_space

SPECS, ACC = fixture_specs_and_accuracy(seed=0)


@pytest.mark.parametrize("kind,metric", [("flash", "nn_degree"), ("nnmass", "nn_mass")])
def test_curves_rank_exactly_as_their_metric(kind: str, metric: str) -> None:
    model = make_accuracy_model(kind).fit(SPECS, ACC)
    pred = model.predict(SPECS)
    x = spec_features(SPECS)[metric]
    order = np.argsort(x, kind="stable")
    d = np.diff(pred[order])
    assert np.all(d >= -1e-12) or np.all(d <= 1e-12)  # monotone in the metric
    rep = model.report()
    assert 0 <= rep["lo"] <= 1 and 0 <= rep["hi"] <= 1 and rep["direction"] in ("increasing", "decreasing")


def test_curve_fit_is_robust_to_one_wild_training() -> None:
    clean = make_accuracy_model("flash").fit(SPECS, ACC).predict(SPECS)
    y = ACC.copy()
    y[int(np.argmax(spec_features(SPECS)["nn_degree"]))] = 0.05  # one diverged-looking run
    dirty = make_accuracy_model("flash").fit(SPECS, y).predict(SPECS)
    assert np.median(np.abs(dirty - clean)) < 0.03


def test_cross_validation_on_real_trainings_and_the_plot(tmp_path) -> None:
    proxies = fixture_proxies(0)
    for kind in ("flash", "multi"):
        m, pred = cross_validate_accuracy(lambda k=kind: make_accuracy_model(k), SPECS, ACC, proxies=proxies)
        assert m["folds"] == len(SPECS) and np.all(np.isfinite(pred))
        assert m["spearman"] > 0.2, (kind, m)  # out of sample, a real signal on the tiny task
    model = make_accuracy_model("multi").fit(SPECS, ACC, proxies=proxies)
    _, std = model.predict_with_std(SPECS, proxies=proxies)
    assert std is not None and np.all((std > 0) & (std < 0.5))
    assert set(model.report()["coefficients"]) >= {"log_nn_degree", "log_synflow", "naswot"}
    png = plot_predicted_vs_trained(ACC, pred, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_are_in_points_and_rank_correlations() -> None:
    m = accuracy_metrics([0.80, 0.85, 0.90, 0.70], [0.81, 0.84, 0.92, 0.70])
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["mae_points"] == pytest.approx(1.0) and m["n"] == 4
    assert np.isnan(rank_correlations([1, 1, 1], [1, 2, 3])[0])
    with pytest.raises(AccuracyModelError, match="predictions"):
        accuracy_metrics([0.5, 0.6], [0.5])


def test_selection_spreads_over_degree_and_size_deterministically() -> None:
    pool = get_space("flash-fmnist").sample(400, seed=1)
    pick = select_for_training(pool, 25, seed=0)
    assert pick == select_for_training(pool, 25, seed=0) and len(set(pick)) == 25
    f = spec_features(pool)
    deg = f["nn_degree"]
    assert deg[pick].min() == deg.min() and deg[pick].max() == deg.max()  # both extremes
    # covers the range better than random draws: the largest gap in sorted log NN-Degree is smaller
    rng = np.random.default_rng(0)

    def gap(idx) -> float:
        v = np.sort(np.log(deg[idx]))
        return float(np.max(np.diff(np.concatenate([[np.log(deg.min())], v, [np.log(deg.max())]]))))

    random_gaps = [gap(rng.choice(len(pool), 25, replace=False)) for _ in range(20)]
    assert gap(pick) < np.median(random_gaps)
    with pytest.raises(AccuracyModelError, match="only 400"):
        select_for_training(pool, 401)
    with pytest.raises(AccuracyModelError, match="positive integer"):
        select_for_training(pool, 0)
