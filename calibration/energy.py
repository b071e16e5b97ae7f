"""Energy model: idle power x time + energy per MAC + energy per byte.

::

    energy_mj = idle_power_w * latency_ms + pj_per_mac * MACs * 1e-9 + pj_per_byte * bytes * 1e-9

(W x ms = mJ; 1 pJ = 1e-9 mJ). ``fit(X, energy_mj, latency_ms=...)`` needs the measured latency of
every spec: it fits the coefficients (all non-negative, on relative error) with the *measured*
latency, and fits its own latency model (``latency_model``, a registered kind) on the same
measurements, which ``predict`` uses when no measured latency is passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nnflash.calibration.base import (
    COST_MODELS,
    CostModel,
    check_target,
    make_model,
    model_from_dict,
    register_cost_model,
)
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import LayerRecord
from nnflash.calibration.fitting import relative_nnls


@register_cost_model
class EnergyModel(CostModel):
    """Energy per inference in mJ (see the module docstring)."""

    kind = "energy"
    target = "energy_mj"
    min_samples = 5
    fit_requires = ("latency_ms",)

    def __init__(self, latency_model: str = "roofline") -> None:
        self.latency_model = latency_model

    def _validate_params(self) -> None:
        lm = COST_MODELS.get(self.latency_model)
        if lm is None or lm.target != "latency_ms":
            known = [k for k, v in COST_MODELS.items() if v.target == "latency_ms"]
            raise CostModelError(f"energy: latency_model must be one of {', '.join(known)}, got {self.latency_model!r}")

    @staticmethod
    def _design(tables: list[list[LayerRecord]], latency_ms: np.ndarray) -> np.ndarray:
        macs = np.array([sum(r.macs for r in t) for t in tables])
        nbytes = np.array([sum(r.bytes for r in t) for t in tables])
        return np.column_stack([latency_ms, macs * 1e-9, nbytes * 1e-9])

    def _fit(self, tables: list[list[LayerRecord]], y: np.ndarray, **kw: Any) -> None:
        latency = kw["latency_ms"]
        self.latency_model_ = make_model(self.latency_model).fit(tables, latency)
        c = relative_nnls(self._design(tables, latency), y)
        self.idle_power_w_, self.pj_per_mac_, self.pj_per_byte_ = (float(v) for v in c)

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        latency = kw.get("latency_ms")
        if latency is None:
            latency = self.latency_model_.predict(tables)
        else:
            latency = check_target(latency, len(tables), "latency_ms")
        c = np.array([self.idle_power_w_, self.pj_per_mac_, self.pj_per_byte_])
        return self._design(tables, latency) @ c

    def predict_latency(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self.latency_model_.predict(X)

    def report(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "idle_power_w": self.idle_power_w_,
            "pj_per_mac": self.pj_per_mac_,
            "pj_per_byte": self.pj_per_byte_,
            "latency_model": self.latency_model_.report(),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "idle_power_w": self.idle_power_w_,
            "pj_per_mac": self.pj_per_mac_,
            "pj_per_byte": self.pj_per_byte_,
            "latency_model": self.latency_model_.to_dict(),
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.idle_power_w_ = float(state["idle_power_w"])
        self.pj_per_mac_ = float(state["pj_per_mac"])
        self.pj_per_byte_ = float(state["pj_per_byte"])
        self.latency_model_ = model_from_dict(state["latency_model"], source="latency_model")
