"""The accuracy-predictor contract (the cost models' conventions), run over every registered
predictor, on accuracies measured by real trainings (tests/unit/fixtures/accuracy)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from accuracy_fixture import fixture_proxies, fixture_specs_and_accuracy

from nnflash.calibration.accuracy import (
    ACCURACY_MODELS,
    AccuracyModel,
    AccuracyModelError,
    load_accuracy_model,
    make_accuracy_model,
    register_accuracy_model,
)
from nnflash.models.spec import Cell, DenseSpec

SPECS, ACC = fixture_specs_and_accuracy(seed=0)
PROXIES = fixture_proxies(0)
KINDS = sorted(ACCURACY_MODELS)


def _kw(cls: type, idx: slice | None = None) -> dict:
    if not cls.needs_proxies:
        return {}
    return {"proxies": PROXIES if idx is None else PROXIES[idx]}


def _fit(cls: type) -> AccuracyModel:
    return cls().fit(SPECS, ACC, **_kw(cls))


@pytest.fixture(scope="module")
def fitted() -> dict[str, AccuracyModel]:
    return {k: _fit(ACCURACY_MODELS[k]) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_init_stores_hyper_parameters_only(kind: str) -> None:
    cls = ACCURACY_MODELS[kind]
    model = cls()
    params = model.get_params()
    sig = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(params) == sig and set(vars(model)) == set(sig)
    assert make_accuracy_model(kind, **params).get_params() == params
    with pytest.raises(AccuracyModelError, match="unknown hyper-parameter"):
        model.set_params(no_such_parameter=1)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_returns_self_and_learned_attributes_end_in_underscore(kind: str) -> None:
    cls = ACCURACY_MODELS[kind]
    model = cls()
    before = set(vars(model))
    assert model.fit(SPECS, ACC, **_kw(cls)) is model
    learned = set(vars(model)) - before
    assert learned and all(n.endswith("_") and not n.startswith("_") for n in learned)
    assert model.get_params() == cls().get_params()


@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_predict_raises(kind: str) -> None:
    model = ACCURACY_MODELS[kind]()
    with pytest.raises(AccuracyModelError, match="not fitted"):
        model.predict(SPECS[:2], **_kw(type(model), slice(0, 2)))
    with pytest.raises(AccuracyModelError, match="not fitted"):
        model.save("/nonexistent/never.json")


@pytest.mark.parametrize("kind", KINDS)
def test_predictions_are_fractions_and_score_reports_ranks_and_points(kind: str, fitted) -> None:
    model = fitted[kind]
    cls = type(model)
    pred, std = model.predict_with_std(SPECS, **_kw(cls))
    assert pred.shape == (len(SPECS),) and np.all((pred >= 0) & (pred <= 1))
    assert std is None or (std.shape == pred.shape and np.all(std > 0))
    s = model.score(SPECS, ACC, **_kw(cls))
    assert set(s) >= {"spearman", "kendall", "mae_points", "rmse_points", "n"} and s["n"] == len(SPECS)
    assert -1 <= s["spearman"] <= 1 and 0 <= s["mae_points"] < 100
    assert model.predict([], **({"proxies": []} if cls.needs_proxies else {})).shape == (0,)
    assert np.allclose(model.predict([x.to_dict() for x in SPECS[:3]], **_kw(cls, slice(0, 3))), pred[:3])


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip_gives_identical_predictions(kind: str, fitted, tmp_path) -> None:
    model = fitted[kind]
    path = model.save(tmp_path / "a.json", dataset="tiny-quadrants", protocol_hash="abc", cv={"spearman": 0.5})
    obj = json.loads(path.read_text())
    assert obj["format"] == "nnflash-accuracy-model" and obj["kind"] == kind
    meta = obj["metadata"]
    for key in ("dataset", "protocol_hash", "input_shape", "num_classes", "training_spec_ids", "cv", "fit_date"):
        assert key in meta
    assert meta["input_shape"] == [1, 8, 8] and meta["training_spec_ids"] == [s.spec_id for s in SPECS]
    loaded = load_accuracy_model(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.predict(SPECS, **_kw(type(model))), model.predict(SPECS, **_kw(type(model))))


@pytest.mark.parametrize("kind", KINDS)
def test_refit_is_deterministic(kind: str, fitted) -> None:
    cls = ACCURACY_MODELS[kind]
    assert np.array_equal(_fit(cls).predict(SPECS, **_kw(cls)), fitted[kind].predict(SPECS, **_kw(cls)))


@pytest.mark.parametrize("kind", KINDS)
def test_specs_of_another_input_shape_are_refused(kind: str, fitted) -> None:
    model = fitted[kind]
    other = DenseSpec((Cell(2, 4, 0), Cell(2, 8, 0)), num_classes=4)  # 3x32x32
    kw = {"proxies": PROXIES[:1]} if model.needs_proxies else {}
    with pytest.raises(
        AccuracyModelError, match=r"fitted on (tiny-quadrants \()?1x8x8\)? specs; spec \w+ has input shape 3x32x32"
    ):
        model.predict([other], **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_clear_errors(kind: str) -> None:
    cls = ACCURACY_MODELS[kind]
    kw = _kw(cls)
    with pytest.raises(AccuracyModelError, match="1-D"):
        cls().fit(SPECS, np.column_stack([ACC, ACC]), **kw)
    with pytest.raises(AccuracyModelError, match="values for"):
        cls().fit(SPECS, ACC[:-1], **kw)
    with pytest.raises(AccuracyModelError, match="fractions in 0..1"):
        cls().fit(SPECS, ACC * 100, **kw)
    bad = ACC.copy()
    bad[2] = np.nan
    with pytest.raises(AccuracyModelError, match="finite"):
        cls().fit(SPECS, bad, **kw)
    with pytest.raises(AccuracyModelError, match="not a single one"):
        cls().fit(SPECS[0], ACC[:1], **kw)
    with pytest.raises(AccuracyModelError, match="numeric array"):
        cls().fit(np.ones((len(SPECS), 3)), ACC, **kw)
    mixed = [*SPECS[:-1], DenseSpec((Cell(2, 4, 0),), num_classes=4)]
    with pytest.raises(AccuracyModelError, match="several input shapes"):
        cls().fit(mixed, ACC, **kw)
    if cls.needs_proxies:
        with pytest.raises(AccuracyModelError, match="needs the zero-cost proxies"):
            cls().fit(SPECS, ACC)
        with pytest.raises(AccuracyModelError, match="entries for"):
            cls().fit(SPECS, ACC, proxies=PROXIES[:-1])
    assert issubclass(AccuracyModelError, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_too_few_samples_say_how_many(kind: str) -> None:
    cls = ACCURACY_MODELS[kind]
    n = cls.min_samples - 1
    with pytest.raises(AccuracyModelError, match=f"too few trained specs to fit: got {n}, need at least {n + 1}"):
        cls().fit(SPECS[:n], ACC[:n], **_kw(cls, slice(0, n)))
    cls().fit(SPECS[: n + 1], ACC[: n + 1], **_kw(cls, slice(0, n + 1)))


def test_registry_and_corrupt_files(tmp_path) -> None:
    assert set(ACCURACY_MODELS) == {"flash", "nnmass", "multi"}
    with pytest.raises(AccuracyModelError, match="unknown accuracy predictor"):
        make_accuracy_model("forest")

    class Impostor(AccuracyModel):
        kind = "flash"

    with pytest.raises(TypeError, match="registered twice"):
        register_accuracy_model(Impostor)
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(AccuracyModelError, match="not valid JSON"):
        load_accuracy_model(p)
    p.write_text(json.dumps({"format": "nnflash-cost-model"}))
    with pytest.raises(AccuracyModelError, match="not an nnflash accuracy predictor"):
        load_accuracy_model(p)
    good = _fit(ACCURACY_MODELS["flash"]).to_dict()
    good["state"] = {"lo": "x"}
    p.write_text(json.dumps(good))
    with pytest.raises(AccuracyModelError, match="corrupt flash state"):
        load_accuracy_model(p)
    with pytest.raises(AccuracyModelError, match="no such file"):
        load_accuracy_model(tmp_path / "missing.json")
