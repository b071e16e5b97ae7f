"""A monotone accuracy predictor as the search's objective (fitted on the fixture's real trainings)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from accuracy_fixture import fixture_specs_and_accuracy

from nnflash.calibration.accuracy import make_accuracy_model
from nnflash.calibration.synthetic import known_roofline
from nnflash.models.metrics import compute_metrics
from nnflash.models.space import CellRange, Space, get_space
from nnflash.search import Deployment, Limits, Objective, SearchError, search
from nnflash.search.exact import cell_configs

# the fixture's task: 1x8x8 inputs, 4 classes, two cells
SMALL = Space("small", (CellRange((2, 3), (2, 4, 6, 8), 8), CellRange((2, 3, 4), (2, 4, 8, 12), 16)),
              input_shape=(1, 8, 8), num_classes=4)  # fmt: skip


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    specs, acc = fixture_specs_and_accuracy(0)
    model = make_accuracy_model("flash").fit(specs, acc)
    model.metadata_.update(input_shape=[1, 8, 8], num_classes=4)
    return model


def test_the_search_maximizes_predicted_accuracy(predictor) -> None:  # type: ignore[no-untyped-def]
    objective = Objective.from_predictor(predictor)
    dep = Deployment.from_model(known_roofline(conv_algorithm="ort_nchwc8"))
    cfg = [cell_configs(SMALL, c) for c in range(2)]
    specs = [
        SMALL.to_spec(
            np.array([cfg[0][0][a], cfg[1][0][b]]),
            np.array([cfg[0][1][a], cfg[1][1][b]]),
            np.array([cfg[0][2][a], cfg[1][2][b]]),
        )  # fmt: skip
        for a, b in itertools.product(range(len(cfg[0][0])), range(len(cfg[1][0])))
    ]
    lat = dep.latency_model.predict(specs)
    acc = predictor.predict(specs)
    limit = float(np.quantile(lat, 0.4))
    best = search(SMALL, [dep], objective, Limits(max_latency_ms=limit), method="exact").best
    assert best.accuracy == pytest.approx(float(predictor.predict([best.spec])[0]), abs=1e-12)
    assert best.objective == best.accuracy
    assert best.accuracy == pytest.approx(acc[lat <= limit].max(), abs=1e-12)
    # the objective's vectorized map agrees with the predictor
    metric = np.array([compute_metrics(s)["nn_degree"] for s in specs])
    np.testing.assert_allclose(objective.value(metric), acc, atol=1e-12)


def test_a_predictor_of_another_shape_is_refused(predictor) -> None:  # type: ignore[no-untyped-def]
    dep = Deployment.from_model(known_roofline(conv_algorithm="none"))
    with pytest.raises(SearchError, match="fitted on"):
        search(get_space("flash-fmnist"), [dep], Objective.from_predictor(predictor), Limits(max_latency_ms=1.0))
