"""The search's vectorized per-cell evaluator agrees with the full cost models' predict."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.calibration import make_model
from nnflash.calibration.synthetic import known_roofline, synthetic_energy, synthetic_latency
from nnflash.models.metrics import dense_params_macs
from nnflash.models.space import CellRange, Space, get_space
from nnflash.search.evaluator import CellEvaluator, network_costs
from nnflash.search.memory import peak_memory_mb

ALGOS = ("none", "im2col", "nchwc8", "nchwc16", "ort_nchwc8", "ort_nchwc16")
# widths below the SIMD block and not multiples of 4, caps of every residue modulo 4
CORNERS = Space(
    "corners",
    (
        CellRange((2, 3, 4), (2, 4, 6, 12), 12),
        CellRange((2, 3, 4), (3, 8, 18), 20),
        CellRange((2, 3, 5), (5, 16, 20), 24),
    ),
    input_shape=(1, 12, 12),
)


def _arrays(specs):
    return tuple(np.array([[getattr(c, k) for c in s.cells] for s in specs]) for k in ("depth", "width", "tc"))


def _specs(space: Space, n: int, seed: int) -> list:
    specs = space.sample(n, seed=seed)
    if space is CORNERS:  # small caps too, so that tc % 4 takes every value
        rng = np.random.default_rng(seed)
        d, w, t = _arrays(specs)
        t = np.minimum(t, rng.integers(0, 8, size=t.shape))
        specs = [space.to_spec(d[i], w[i], t[i]) for i in range(n)]
    return specs


def _models(train: list) -> dict:
    models = {a: known_roofline(conv_algorithm=a) for a in ALGOS}
    y = synthetic_latency(train)
    models["linear"] = make_model("linear").fit(train, y)
    models["macs"] = make_model("macs").fit(train, y)
    return models


@pytest.mark.parametrize("space", [get_space("flash"), get_space("flash-fmnist"), CORNERS], ids=lambda s: s.name)
def test_latency_of_every_model_kind_agrees_with_predict(space: Space) -> None:
    specs = _specs(space, 150, seed=1)
    d, w, t = _arrays(specs)
    for name, model in _models(specs[:30]).items():
        got = network_costs(CellEvaluator(space, model), d, w, t)["latency_ms"]
        np.testing.assert_allclose(got, model.predict(specs), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("space", [get_space("flash"), get_space("flash-fmnist")], ids=lambda s: s.name)
def test_energy_counts_and_peak_memory_agree(space: Space) -> None:
    specs = _specs(space, 120, seed=2)
    d, w, t = _arrays(specs)
    y = synthetic_latency(specs[:30])
    energy = make_model("energy").fit(specs[:30], synthetic_energy(specs[:30], y), latency_ms=y)
    out = network_costs(CellEvaluator(space, energy.latency_model_, energy), d, w, t)
    np.testing.assert_allclose(out["energy_mj"], energy.predict(specs), rtol=1e-6)
    np.testing.assert_allclose(out["latency_ms"], energy.latency_model_.predict(specs), rtol=1e-6)
    params, macs = dense_params_macs(d, w, t, input_shape=space.input_shape, num_classes=space.num_classes)
    np.testing.assert_array_equal(out["params"], params)
    np.testing.assert_array_equal(out["macs"], macs)
    np.testing.assert_allclose(out["peak_memory_mb"], [peak_memory_mb(s) for s in specs], rtol=1e-12)


def test_layout_state_depends_on_the_cap_modulo_4() -> None:
    ev = CellEvaluator(get_space("flash"), known_roofline(conv_algorithm="ort_nchwc16"))
    d, w = np.full(4, 4), np.full(4, 32)
    blocked = ev.out_blocked(d, w, np.array([4, 5, 6, 8]))
    assert blocked.tolist() == [True, False, False, True]
    assert not CellEvaluator(get_space("flash"), known_roofline(conv_algorithm="none")).out_blocked(d, w, d).any()
