"""The search of space nb201 (exact enumeration, ``search.nb201``) against a brute force written here:
the cost model is a roofline fitted on real rows of NAS-Bench-201's Raspberry Pi 4 column (the
fixture, every 250th row of ``../shared/data/nb201``), the candidates a random subset of the space
(the full 15,625 take about a minute to predict; ``test_search_nb201_cli.py`` runs them)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nnflash.calibration import RooflineLatencyModel
from nnflash.calibration.accuracy import make_accuracy_model
from nnflash.models.metrics import compute_metrics
from nnflash.models.nb201 import Nb201Spec
from nnflash.models.space import get_space
from nnflash.search import Deployment, Infeasible, Limits, Objective, SearchError, build_tables, pareto_front, search
from nnflash.search.api import meets, recheck

FIXTURE = Path(__file__).parent / "fixtures" / "nb201" / "nb201_every250.csv"
SPACE = get_space("nb201")


def _rows() -> tuple[list[Nb201Spec], np.ndarray, np.ndarray]:
    specs, lat, acc = [], [], []
    with FIXTURE.open(newline="") as fh:
        for row in csv.DictReader(fh):
            specs.append(Nb201Spec(arch=row["arch"]))
            lat.append(float(row["raspi4_tflite_latency_ms"]))
            acc.append(float(row["cifar10_test_accuracy_200ep"]) / 100)
    return specs, np.array(lat), np.array(acc)


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    specs, lat, acc = _rows()
    model = RooflineLatencyModel().fit(specs, lat)
    dep = Deployment.from_model(model)
    cands = SPACE.sample(500, seed=11)
    pred = model.predict(cands)  # the brute force's own predictions, spec by spec
    metrics = [compute_metrics(s) for s in cands]
    flash = make_accuracy_model("flash").fit(specs, acc)
    return {"model": model, "dep": dep, "cands": cands, "pred": pred, "metrics": metrics, "flash": flash}


def _brute_best(values: np.ndarray, pred: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """The best objective among the feasible, and the lowest latency among those with it."""
    best = float(values[ok].max())
    return best, float(pred[ok & (values == best)].min())


@pytest.mark.parametrize("objective", ["nn-degree", "nn-mass", "flash"])
def test_returns_the_brute_force_optimum_under_the_limit(setup: dict[str, Any], objective: str) -> None:
    cands, pred, dep = setup["cands"], setup["pred"], setup["dep"]
    if objective == "flash":
        obj = Objective.from_predictor(setup["flash"])
        values = np.asarray(setup["flash"].predict(cands))
    else:
        obj = Objective.parse(objective)
        values = np.array([m[objective.replace("-", "_")] for m in setup["metrics"]])
    tables = build_tables(SPACE, [dep], obj, specs=cands)
    for q in (5, 25, 50, 90):
        limit = float(np.percentile(pred, q))
        for margin in (0.0, 0.2):
            res = search(SPACE, [dep], obj, Limits(max_latency_ms=limit), margin=margin, top_k=3, tables=tables)
            ok = pred <= limit * (1 - margin)
            best, lat_of_best = _brute_best(values, pred, ok)
            first = res.designs[0]
            assert first.objective == pytest.approx(best, rel=1e-9)
            assert first.latency_ms == pytest.approx(lat_of_best, rel=1e-9)
            got = [d.objective for d in res.designs]
            assert got == sorted(got, reverse=True) and len(res.designs) == min(3, int(ok.sum()))
            # the next ones are the next best of the brute force too
            assert got == pytest.approx(sorted(values[ok], reverse=True)[: len(got)], rel=1e-9)


def test_params_and_macs_limits_with_latency(setup: dict[str, Any]) -> None:
    cands, pred, dep = setup["cands"], setup["pred"], setup["dep"]
    params = np.array([m["params"] for m in setup["metrics"]], float)
    macs = np.array([m["macs"] for m in setup["metrics"]], float)
    values = np.array([m["nn_degree"] for m in setup["metrics"]])
    tables = build_tables(SPACE, [dep], Objective.parse("nn-degree"), specs=cands)
    lim = Limits(
        max_latency_ms=float(np.percentile(pred, 80)),
        max_params=float(np.percentile(params, 40)),
        max_macs=float(np.percentile(macs, 60)),
    )
    res = search(SPACE, [dep], Objective.parse("nn-degree"), lim, tables=tables)
    ok = (pred <= lim.max_latency_ms) & (params <= lim.max_params) & (macs <= lim.max_macs)  # type: ignore[operator]
    assert res.designs[0].objective == _brute_best(values, pred, ok)[0]
    d = res.designs[0]
    assert d.params <= lim.max_params and d.macs <= lim.max_macs and d.peak_memory_mb is None  # type: ignore[operator]


def test_nothing_returned_violates_a_limit(setup: dict[str, Any]) -> None:
    cands, pred, dep, model = setup["cands"], setup["pred"], setup["dep"], setup["model"]
    obj = Objective.parse("nn-mass")
    tables = build_tables(SPACE, [dep], obj, specs=cands)
    for limit in np.geomspace(pred.min() * 1.01, pred.max(), 12):
        for margin in (0.0, 0.1, 0.4):
            try:
                lim = Limits(max_latency_ms=float(limit))
                res = search(SPACE, [dep], obj, lim, margin=margin, top_k=5, tables=tables)
            except Infeasible:
                assert pred.min() > limit * (1 - margin)
                continue
            for d in res.designs:
                own = float(model.predict([d.spec])[0])  # the cost model on the returned spec itself
                assert own <= limit * (1 - margin) and own == d.latency_ms
                assert meets(recheck(d.spec, dep, Limits(max_latency_ms=float(limit))), margin)


def test_pareto_front_is_the_brute_force_staircase(setup: dict[str, Any]) -> None:
    cands, pred, dep = setup["cands"], setup["pred"], setup["dep"]
    obj = Objective.parse("nn-degree")
    values = np.array([m["nn_degree"] for m in setup["metrics"]])
    front = pareto_front(SPACE, [dep], obj, tables=build_tables(SPACE, [dep], obj, specs=cands))
    lat = [d.latency_ms for d in front]
    val = [d.objective for d in front]
    assert lat == sorted(lat) and val == sorted(val) and len(set(val)) == len(val)
    # every candidate is matched by a front point at most as slow, and every front point is needed
    for v, p in zip(values, pred):
        assert any(fl <= p and fv >= v for fl, fv in zip(lat, val))
    for fl, fv in zip(lat, val):
        assert not np.any((pred <= fl) & (values > fv))
    # the brute force's staircase has as many steps
    order = np.lexsort((-values, pred))
    steps, best = 0, -np.inf
    for o in order:
        if values[o] > best:
            steps, best = steps + 1, values[o]
    assert steps == len(front)


def test_infeasible_names_the_tightest_latency(setup: dict[str, Any]) -> None:
    cands, pred, dep = setup["cands"], setup["pred"], setup["dep"]
    obj = Objective.parse("nn-degree")
    tables = build_tables(SPACE, [dep], obj, specs=cands)
    with pytest.raises(Infeasible) as e:
        search(SPACE, [dep], obj, Limits(max_latency_ms=float(pred.min()) * 0.9), tables=tables)
    assert e.value.tightest["max_latency_ms"] == pytest.approx(float(pred.min()))
    assert "space 'nb201'" in str(e.value)


def test_scores_objective_maximizes_the_given_values(setup: dict[str, Any]) -> None:
    cands, pred, dep = setup["cands"], setup["pred"], setup["dep"]
    rng = np.random.default_rng(5)
    scores = {s.spec_id: float(v) for s, v in zip(cands, rng.random(len(cands)))}
    obj = Objective.from_scores("test", scores)
    limit = float(np.median(pred))
    res = search(SPACE, [dep], obj, Limits(max_latency_ms=limit), tables=build_tables(SPACE, [dep], obj, specs=cands))
    vals = np.array([scores[s.spec_id] for s in cands])
    assert res.designs[0].objective == vals[pred <= limit].max() == res.designs[0].accuracy
    other = next(s for s in SPACE.sample(50, seed=12) if s.spec_id not in scores)
    with pytest.raises(SearchError, match="no score for 1 of the 501 candidates"):
        build_tables(SPACE, [dep], obj, specs=[*cands, other])
    with pytest.raises(SearchError, match="space nb201 only"):
        search(get_space("flash"), [dep], obj, Limits(max_latency_ms=1.0))
    with pytest.raises(SearchError, match="finite number"):
        Objective.from_scores("bad", {"x": float("nan")})


def test_methods_and_limits_that_do_not_apply(setup: dict[str, Any]) -> None:
    dep = setup["dep"]
    obj = Objective.parse("nn-degree")
    for method in ("shgo", "random"):
        with pytest.raises(SearchError, match=f"method: {method} does not apply to space nb201.*--method exact"):
            search(SPACE, [dep], obj, Limits(max_latency_ms=10.0), method=method)
    with pytest.raises(SearchError, match="no peak-memory model of nb201"):
        search(SPACE, [dep], obj, Limits(max_latency_ms=10.0, max_peak_memory_mb=1.0))
    with pytest.raises(SearchError, match="applies to space nb201 only"):
        build_tables(get_space("flash"), [dep], obj, specs=setup["cands"][:3])
    with pytest.raises(SearchError, match="another space, objective or deployments"):
        tables = build_tables(SPACE, [dep], obj, specs=setup["cands"][:20])
        search(SPACE, [dep], Objective.parse("nn-mass"), Limits(max_latency_ms=10.0), tables=tables)
