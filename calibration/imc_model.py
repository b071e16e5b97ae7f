"""The IMC accelerator as a cost model (``kind = "imc"``), its reference figures and its calibration.

:mod:`nnflash.calibration.imc` is the vectorized model; this module wraps it in the cost models'
conventions (``fit``/``predict``/``score``, JSON, the contract test) and holds the published figures
it is calibrated and validated against: DNN+NeuroSim V1.3's default run, VGG-8 on CIFAR-10.

``fit(X, y, reference=None)`` is the calibration. ``y`` is the reference latency (ms) of every spec;
``reference`` optionally gives, per spec, a dict of component figures (keys of
:data:`CALIBRATION_TARGETS`). Each calibrated constant enters one figure linearly, so each is solved
in closed form, on relative error, over the specs that have its figure, in the order of
:data:`CALIBRATION_TARGETS` (the interconnect before the "other" energy that contains it). A
constant without a figure keeps its value, except the buffer bandwidth, which is then fitted to the
total latency ``y``. :meth:`ImcModel.shipped` is the model with the shipped constants (the defaults of
:data:`nnflash.calibration.imc.PARAMS`), which are this fit on V1.3's VGG-8:
``ImcModel().fit([preset("vgg8_cifar")], [1.456], reference=[v13_reference()])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnflash.calibration.base import CostModel, code_version, register_cost_model
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import LayerRecord, as_layer_tables
from nnflash.calibration.imc import CALIBRATED, KNOBS, PARAMS, check_param, estimate, knob_grid, resolve
from nnflash.calibration.imc_arrays import LayerArrays, layer_rows

#: DNN+NeuroSim V1.3's default run (user manual): VGG-8 on CIFAR-10, 8-bit weights and activations,
#: RRAM 1T1R at 22 nm, 128x128 subarrays, 2 bits per cell, 5-bit ADC per 8 columns, layer-by-layer.
NEUROSIM_V13_VGG8: dict[str, float] = {
    "area_mm2": 45.55,
    "area_array_mm2": 1.54,
    "area_adc_mm2": 14.61,
    "area_accumulation_mm2": 3.13,
    "area_other_periphery_mm2": 20.09,
    "area_interconnect_mm2": 6.18,
    "tiles": 47,
    "clock_ns": 2.05,
    "latency_ms": 1.456,
    "latency_buffer_ms": 1.00,
    "latency_interconnect_ms": 0.14,
    "latency_adc_ms": 0.0635,
    "energy_uj": 37.75,
    "energy_adc_uj": 18.27,
    "energy_accumulation_uj": 5.17,
    "energy_other_uj": 14.31,
    "energy_interconnect_uj": 8.94,
    "energy_buffer_uj": 0.41,
    "leakage_uj": 1.19,
    "leakage_uw": 628.8,
    "tops_per_w": 25.72,
    "tops": 0.846,
    "fps": 686.75,
}


def v13_reference() -> dict[str, float]:
    """V1.3's figures as calibration targets (:data:`CALIBRATION_TARGETS` keys). Its four printed
    area parts sum to 39.37 of its 45.55 mm^2, and the gap is its 6.18 mm^2 of interconnect, so the
    "other" area we fit (periphery, buffer and interconnect) is the total less array, ADC and
    accumulation."""
    v = NEUROSIM_V13_VGG8
    return {
        "adc_energy_uj": v["energy_adc_uj"],
        "interconnect_energy_uj": v["energy_interconnect_uj"],
        "other_energy_uj": v["energy_other_uj"],
        "other_area_mm2": v["area_mm2"] - v["area_array_mm2"] - v["area_adc_mm2"] - v["area_accumulation_mm2"],
        "buffer_latency_ms": v["latency_buffer_ms"],
        "leakage_uw": v["leakage_uw"],
    }


def _other_energy_uj(r: Mapping[str, np.ndarray]) -> np.ndarray:
    return (r["energy_other_mj"] + r["energy_array_mj"]) * 1e3


#: Calibrated constant -> (reference key, the model's matching figure). Solved in this order.
CALIBRATION_TARGETS: dict[str, tuple[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]] = {
    "input_bit_density": ("adc_energy_uj", lambda r: r["energy_adc_mj"] * 1e3),
    "noc_energy_pj_per_bit_hop": ("interconnect_energy_uj", lambda r: r["energy_interconnect_mj"] * 1e3),
    "periph_energy_fj_per_line": ("other_energy_uj", _other_energy_uj),
    "periph_area_um2_per_line": ("other_area_mm2", lambda r: r["area_other_mm2"]),
    "buffer_bits_per_ns": ("buffer_latency_ms", lambda r: r["latency_buffer_ms"]),
    "leakage_uw_per_mm2": ("leakage_uw", lambda r: r["leakage_mw"] * 1e3),
}
assert set(CALIBRATION_TARGETS) == set(CALIBRATED)


def _solve_affine(f0: np.ndarray, f1: np.ndarray, x0: float, x1: float, y: np.ndarray) -> float:
    """``x`` minimising the relative error of ``f(x) = f0 + (f1 - f0) (x - x0) / (x1 - x0)`` to ``y``."""
    g = (f1 - f0) / (x1 - x0)
    f = f0 - g * x0
    den = float(np.sum(g * g / y**2))
    if den <= 0:
        raise CostModelError("imc: calibration: the figure does not depend on its constant for these networks")
    return float(np.sum(g * (y - f) / y**2)) / den


def calibrate(
    net: LayerArrays,
    latency_ms: np.ndarray,
    reference: Sequence[Mapping[str, float] | None] | None,
    params: Mapping[str, Any],
) -> dict[str, float]:
    """The six calibrated constants fitted to the reference figures (see the module docstring)."""
    p = resolve(params)
    const = {k: float(p[k]) for k in CALIBRATED}
    refs: list[Mapping[str, float]] = [dict(r or {}) for r in (reference or [None] * net.n)]
    if len(refs) != net.n:
        raise CostModelError(f"imc: reference: {len(refs)} entries for {net.n} specs")
    known = {key for key, _ in CALIBRATION_TARGETS.values()}
    for i, ref in enumerate(refs):
        for key, val in ref.items():
            if key not in known:
                raise CostModelError(f"imc: reference[{i}]: unknown figure {key!r} (known: {', '.join(sorted(known))})")
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not np.isfinite(val) or val <= 0:
                raise CostModelError(f"imc: reference[{i}].{key}: must be a positive number, got {val!r}")
    for name, (key, figure) in CALIBRATION_TARGETS.items():
        rows = np.array([i for i, ref in enumerate(refs) if key in ref], dtype=np.int64)
        if name == "buffer_bits_per_ns":
            if len(rows) == 0:  # no buffer figure: fit the bandwidth to the total latency
                rows, y = np.arange(net.n), np.asarray(latency_ms, dtype=np.float64)
                figure = lambda r: r["latency_ms"]  # noqa: E731
            else:
                y = np.array([refs[i][key] for i in rows])
            sub = net.take(rows)
            # latency is affine in 1/bandwidth
            f0 = figure(estimate(sub, {**p, **const, name: 1e9}))
            f1 = figure(estimate(sub, {**p, **const, name: 1.0}))
            u = _solve_affine(f0, f1, 1e-9, 1.0, y)
            if u <= 0:
                raise CostModelError(
                    "imc: calibration: the reference latencies are below what the crossbars, ADCs and "
                    "interconnect alone take; the buffer bandwidth cannot be fitted"
                )
            const[name] = 1.0 / u
            continue
        if len(rows) == 0:
            continue
        sub = net.take(rows)
        y = np.array([refs[i][key] for i in rows])
        lo, hi = PARAMS[name].low or 0.0, PARAMS[name].high
        x0 = max(lo, 1e-6)
        x1 = x0 + (min(1.0, 0.5 * (hi - x0)) if hi is not None else 1.0)
        f0 = figure(estimate(sub, {**p, **const, name: x0}))
        f1 = figure(estimate(sub, {**p, **const, name: x1}))
        x = _solve_affine(f0, f1, x0, x1, y)
        try:
            check_param(name, x)
        except CostModelError as e:
            raise CostModelError(f"imc: calibration to {key} gives {name} = {x:.4g}, out of range ({e})") from None
        const[name] = x
    return const


@register_cost_model
class ImcModel(CostModel):
    """An in-memory-computing accelerator (RRAM crossbars, NeuroSim V1.3's mapping): latency in ms
    per inference; :meth:`estimate` gives area, energy and every breakdown.

    ``params`` are the model's named physical parameters (:data:`nnflash.calibration.imc.PARAMS`;
    missing ones take their V1.3 defaults); ``fit`` calibrates the six constants of
    :data:`~nnflash.calibration.imc.CALIBRATED` (learned as ``constants_``)."""

    kind = "imc"
    target = "latency_ms"
    min_samples = 1

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = params

    def _validate_params(self) -> None:
        if self.params is not None and not isinstance(self.params, Mapping):
            raise CostModelError(f"imc: params must be a mapping of parameter names to values, got {self.params!r}")
        resolve(self.params or {})

    def hardware(self) -> dict[str, Any]:
        """Every parameter: defaults, then ``params``, then the fitted constants."""
        self._check_fitted()
        return {**resolve(self.params or {}), **self.constants_}

    @classmethod
    def shipped(cls, params: Mapping[str, Any] | None = None) -> ImcModel:
        """The model as shipped: calibrated constants from ``params`` or their defaults (the fit to
        DNN+NeuroSim V1.3's VGG-8), without refitting."""
        model = cls(dict(params) if params else None)
        model._validate_params()
        p = resolve(model.params or {})
        model.constants_ = {k: float(p[k]) for k in CALIBRATED}
        model.metadata_ = {
            "calibrated_to": "DNN+NeuroSim V1.3, VGG-8 on CIFAR-10 (user manual's default run)",
            "training_spec_ids": [],
            "n_samples": 1,
            "nnflash_version": code_version(),
            "fit_date": None,
        }
        return model

    def _fit(self, tables: list[list[LayerRecord]], y: np.ndarray, **kw: Any) -> None:
        reference = kw.pop("reference", None)
        if kw:
            raise CostModelError(f"imc: fit: unknown argument {sorted(kw)[0]!r} (known: reference)")
        net = LayerArrays.from_rows([layer_rows(t) for t in tables])
        self.constants_ = calibrate(net, y, reference, self.params or {})

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        return np.asarray(self.estimate(tables)["latency_ms"])

    def estimate(self, X: Any, *, per_layer: bool = False) -> dict[str, Any]:
        """Every figure of :func:`nnflash.calibration.imc.estimate` for the specs ``X``."""
        self._check_fitted()
        net = LayerArrays.from_rows([layer_rows(t) for t in as_layer_tables(X)])
        return estimate(net, self.hardware(), per_layer=per_layer)

    def report(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "constants": {
                k: {"value": v, "unit": PARAMS[k].unit, "calibrated_to": CALIBRATED[k]}
                for k, v in self.constants_.items()
            },
            "params": resolve(self.params or {}),
        }

    def _state(self) -> dict[str, Any]:
        return {"constants": dict(self.constants_)}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        const = state["constants"]
        if not isinstance(const, Mapping) or set(const) != set(CALIBRATED):
            raise CostModelError(f"imc: state must give the constants {', '.join(CALIBRATED)}")
        self.constants_ = {k: float(check_param(k, float(const[k]))) for k in CALIBRATED}


# ------------------------------------------------------------------------------ accelerator files


@dataclass(frozen=True)
class AcceleratorConfig:
    """An accelerator description (``ACCEL.json``): fixed parameters and the knob ranges a
    co-design search varies. ``{"params": {"tech_nm": 22, ...}, "knobs": {"adc_bits": [4, 5]}}``;
    both parts are optional, missing knobs are fixed at their parameter's value."""

    params: Mapping[str, Any] = field(default_factory=dict)
    knobs: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def knob_arrays(self) -> dict[str, np.ndarray]:
        """Every combination of the knob values (:func:`nnflash.calibration.imc.knob_grid`)."""
        return knob_grid(**self.knobs) if self.knobs else {}


def parse_accelerator(obj: Any, source: str = "accelerator") -> AcceleratorConfig:
    """Validate an accelerator description (a parsed JSON object); errors name the field."""
    if not isinstance(obj, Mapping):
        raise CostModelError(f"{source}: must be a JSON object with params and/or knobs")
    extra = sorted(set(obj) - {"params", "knobs"})
    if extra:
        raise CostModelError(f"{source}: {extra[0]}: unknown field (allowed: knobs, params)")
    params = obj.get("params", {})
    knobs = obj.get("knobs", {})
    if not isinstance(params, Mapping) or not isinstance(knobs, Mapping):
        raise CostModelError(f"{source}: params and knobs must be JSON objects")
    try:
        resolve(params)
        for key, values in knobs.items():
            if key not in KNOBS:
                raise CostModelError(f"knobs.{key}: not a searchable knob (knobs: {', '.join(KNOBS)})")
            if not isinstance(values, list) or not values or any(isinstance(v, bool) for v in values):
                raise CostModelError(f"knobs.{key}: must be a non-empty list of numbers, got {values!r}")
            check_param(key, np.asarray(values, dtype=np.float64))
    except CostModelError as e:
        raise CostModelError(f"{source}: {str(e).removeprefix('imc: ')}") from None
    return AcceleratorConfig(dict(params), {k: tuple(v) for k, v in knobs.items()})


def estimate_report(spec: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One spec on one accelerator as a JSON-ready dict (``nnflash accel estimate --json``):
    totals, the per-component breakdown, the chip's organisation and one row per weight layer."""
    model = ImcModel.shipped(params)
    r = {k: v[0] for k, v in model.estimate([spec], per_layer=True).items()}
    hw = model.hardware()
    n_layers = int(np.count_nonzero(r["layer_vectors"]))
    tables = as_layer_tables([spec])
    names = [x.name for x in tables[0] if x.kind in ("conv", "pointwise", "depthwise", "linear")]
    layers = []
    for i in range(n_layers):
        layers.append(
            {
                "name": names[i] if i < len(names) else f"layer{i}",
                "mapping": "novel" if r["layer_novel"][i] else "conventional",
                "tiles": int(r["layer_tiles"][i]),
                "crossbars": int(r["layer_crossbars"][i]),
                "speedup": int(r["layer_speedup"][i]),
                "utilization": float(r["layer_utilization"][i]),
                "vectors": int(r["layer_vectors"][i]),
                "latency_ms": float(r["layer_latency_ms"][i]),
            }
        )

    def pick(prefix: str, unit: str) -> dict[str, float]:
        return {
            k[len(prefix) : -len(unit)]: float(v)
            for k, v in r.items()
            if k.startswith(prefix) and k.endswith(unit) and k != f"{prefix[:-1]}{unit}"
        }

    return {
        "spec_id": getattr(spec, "spec_id", None),
        "area_mm2": float(r["area_mm2"]),
        "latency_ms": float(r["latency_ms"]),
        "energy_mj": float(r["energy_mj"]),
        "leakage_mj": float(r["energy_leakage_mj"]),
        "period_ms": float(r["period_ms"]),
        "fps": float(r["fps"]),
        "tops_per_w": float(r["tops_per_w"]),
        "tiles": [x["tiles"] for x in layers],
        "total_tiles": int(r["tiles"]),
        "pes": int(r["pes"]),
        "subarrays": int(r["subarrays"]),
        "adcs": int(r["adcs"]),
        "utilization": float(r["utilization"]),
        "breakdown": {
            "area_mm2": pick("area_", "_mm2"),
            "energy_mj": {k: v for k, v in pick("energy_", "_mj").items() if k != "leakage"},
            "latency_ms": pick("latency_", "_ms"),
        },
        "layers": layers,
        "mode": hw["mode"],
        "params": {k: (v if isinstance(v, str) else float(v)) for k, v in hw.items()},
    }
