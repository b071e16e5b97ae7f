"""The cost-model contract (scikit-learn's check_estimator idea), run over every registered model."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from nnflash.calibration import COST_MODELS, CostModelError, load_model, make_model
from nnflash.calibration.synthetic import synthetic_energy, synthetic_latency
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(30, seed=11)
LAT = synthetic_latency(SPECS, noise=0.02, seed=1)
ENERGY = synthetic_energy(SPECS, LAT)


def _target(cls: type) -> np.ndarray:
    return ENERGY if cls.target == "energy_mj" else LAT


def _extra(cls: type, idx: slice | np.ndarray | None = None) -> dict:
    return {"latency_ms": LAT if idx is None else LAT[idx]} if "latency_ms" in cls.fit_requires else {}


def _fit(cls: type, n: int | None = None) -> object:
    if n is None:
        return cls().fit(SPECS, _target(cls), **_extra(cls))
    return cls().fit(SPECS[:n], _target(cls)[:n], **_extra(cls, slice(0, n)))


KINDS = sorted(COST_MODELS)


@pytest.mark.parametrize("kind", KINDS)
def test_init_stores_hyper_parameters_only(kind: str) -> None:
    cls = COST_MODELS[kind]
    model = cls()
    params = model.get_params()
    sig = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(params) == sig
    assert set(vars(model)) == set(sig)  # nothing else is set in __init__
    assert all(inspect.signature(cls.__init__).parameters[p].default is not inspect.Parameter.empty for p in sig)
    again = make_model(kind, **params)
    assert again.get_params() == params
    if params:
        key = next(iter(params))
        assert model.set_params(**{key: params[key]}) is model
    with pytest.raises(CostModelError, match="unknown hyper-parameter"):
        model.set_params(no_such_parameter=1)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_returns_self_and_learned_attributes_end_in_underscore(kind: str) -> None:
    cls = COST_MODELS[kind]
    model = cls()
    before = set(vars(model))
    assert model.fit(SPECS, _target(cls), **_extra(cls)) is model
    learned = set(vars(model)) - before
    assert learned and all(name.endswith("_") for name in learned)
    assert not any(name.startswith("_") for name in learned)
    assert model.get_params() == cls().get_params()  # fit does not change hyper-parameters


@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_predict_raises(kind: str) -> None:
    model = COST_MODELS[kind]()
    with pytest.raises(CostModelError, match="not fitted"):
        model.predict(SPECS[:2])
    with pytest.raises(CostModelError, match="not fitted"):
        model.save("/nonexistent/never-written.json")


@pytest.mark.parametrize("kind", KINDS)
def test_predict_and_score(kind: str) -> None:
    cls = COST_MODELS[kind]
    model = _fit(cls)
    pred = model.predict(SPECS)
    assert pred.shape == (len(SPECS),) and np.all(np.isfinite(pred)) and np.all(pred > 0)
    score = model.score(SPECS, _target(cls))
    assert set(score) >= {"rmspe", "mape", "within_5", "within_10", "spearman", "n"}
    assert score["n"] == len(SPECS)
    assert model.predict([]).shape == (0,)
    # X may also be spec dicts or layer tables
    from nnflash.models.metrics import layer_table

    assert np.allclose(model.predict([s.to_dict() for s in SPECS[:3]]), pred[:3])
    assert np.allclose(model.predict([layer_table(s) for s in SPECS[:3]]), pred[:3])


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip_gives_identical_predictions(kind: str, tmp_path) -> None:
    model = _fit(COST_MODELS[kind])
    path = model.save(tmp_path / "m.json", device="pi3", runtime="onnxruntime", threads=1, cv={"rmspe": 3.0})
    text = path.read_text()
    obj = json.loads(text)  # plain JSON
    assert obj["kind"] == kind and obj["format_version"] >= 1
    meta = obj["metadata"]
    for key in ("device", "runtime", "threads", "training_spec_ids", "nnflash_version", "fit_date", "cv"):
        assert key in meta
    assert meta["training_spec_ids"] == [s.spec_id for s in SPECS]
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.predict(SPECS), model.predict(SPECS))
    assert np.array_equal(loaded.predict_latency(SPECS), model.predict_latency(SPECS))


@pytest.mark.parametrize("kind", KINDS)
def test_refit_is_deterministic(kind: str) -> None:
    cls = COST_MODELS[kind]
    a, b = _fit(cls), _fit(cls)
    assert np.array_equal(a.predict(SPECS), b.predict(SPECS))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_clear_errors(kind: str) -> None:
    cls = COST_MODELS[kind]
    y = _target(cls)
    extra = _extra(cls)
    with pytest.raises(CostModelError, match="1-D"):
        cls().fit(SPECS, np.column_stack([y, y]), **extra)
    with pytest.raises(CostModelError, match="values for"):
        cls().fit(SPECS, y[:-1], **extra)
    bad = y.copy()
    bad[3] = np.nan
    with pytest.raises(CostModelError, match="finite"):
        cls().fit(SPECS, bad, **extra)
    bad = y.copy()
    bad[4] = -1.0
    with pytest.raises(CostModelError, match="positive"):
        cls().fit(SPECS, bad, **extra)
    with pytest.raises(CostModelError, match="sequence of specs"):
        cls().fit(np.ones((len(SPECS), 3)), y, **extra)
    with pytest.raises(CostModelError, match="single"):
        cls().fit(SPECS[0], y[:1], **extra)
    with pytest.raises(CostModelError):
        cls().fit([object()] * len(SPECS), y, **extra)
    assert issubclass(CostModelError, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_too_few_samples_raise_clearly(kind: str) -> None:
    cls = COST_MODELS[kind]
    n = cls.min_samples - 1
    with pytest.raises(CostModelError, match="too few measurements"):
        cls().fit(SPECS[:n], _target(cls)[:n], **_extra(cls, slice(0, n)))
    _fit(cls, cls.min_samples)  # the minimum itself is enough


def test_registry_is_complete() -> None:
    assert set(COST_MODELS) == {"roofline", "linear", "macs", "energy", "imc"}
    with pytest.raises(CostModelError, match="unknown cost model"):
        make_model("forest")


def test_registration_refuses_a_second_class_for_a_kind_and_an_empty_kind() -> None:
    from nnflash.calibration import CostModel, register_cost_model

    before = dict(COST_MODELS)

    class Impostor(CostModel):
        kind = "roofline"

    class Nameless(CostModel):
        pass

    with pytest.raises(TypeError, match="registered twice"):
        register_cost_model(Impostor)
    with pytest.raises(TypeError, match="non-empty kind"):
        register_cost_model(Nameless)
    assert COST_MODELS == before
    assert register_cost_model(COST_MODELS["macs"]) is COST_MODELS["macs"]  # registering again is harmless
