"""Linear baselines: a non-negative linear model on the features, and MACs alone.

Both are fitted on the *relative* error (rows divided by the measured value), like the roofline
model, so that small and large networks count the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnflash.calibration.base import CostModel, register_cost_model
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import LayerRecord, feature_names, feature_vector
from nnflash.calibration.fitting import relative_nnls

#: Default columns of :class:`LinearLatencyModel` (the per-kind totals are sums of these).
DEFAULT_LINEAR_FEATURES: tuple[str, ...] = tuple(
    n
    for n in feature_names()
    if n.startswith(("macs_", "bytes_")) and n not in ("macs_total", "bytes_total", "bytes_weights")
) + ("ops_total",)


@register_cost_model
class LinearLatencyModel(CostModel):
    """``latency_ms = sum_j c_j * feature_j + intercept_ms`` with every ``c_j >= 0`` (baseline)."""

    kind = "linear"
    min_samples = 3

    def __init__(self, features: Sequence[str] | None = None, ridge: float = 1e-4) -> None:
        self.features = features
        self.ridge = ridge

    def _columns(self) -> list[str]:
        return list(self.features) if self.features is not None else list(DEFAULT_LINEAR_FEATURES)

    def _validate_params(self) -> None:
        names = feature_names()
        unknown = [f for f in self._columns() if f not in names]
        if unknown:
            raise CostModelError(f"linear: unknown feature {unknown[0]!r} (known: {', '.join(names)})")
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise CostModelError(f"linear: ridge must be >= 0, got {self.ridge!r}")

    def _design(self, tables: list[list[LayerRecord]]) -> np.ndarray:
        names = feature_names()
        idx = [names.index(f) for f in self._columns()]
        f = np.stack([feature_vector(t) for t in tables])[:, idx]
        return np.hstack([f, np.ones((len(tables), 1))])

    def _fit(self, tables: list[list[LayerRecord]], y: np.ndarray, **kw: Any) -> None:
        c = relative_nnls(self._design(tables), y, float(self.ridge))
        self.coef_ = c[:-1]
        self.intercept_ms_ = float(c[-1])
        self.feature_names_ = self._columns()

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        return self._design(tables) @ np.append(self.coef_, self.intercept_ms_)

    def _state(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names_),
            "coef": [float(v) for v in self.coef_],
            "intercept_ms": self.intercept_ms_,
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.feature_names_ = list(state["feature_names"])
        self.coef_ = np.array(state["coef"], dtype=np.float64)
        self.intercept_ms_ = float(state["intercept_ms"])
        if len(self.coef_) != len(self.feature_names_) or self.feature_names_ != self._columns():
            raise CostModelError("linear: saved coefficients do not match the saved features")


@register_cost_model
class MacsOnlyModel(CostModel):
    """``latency_ms = ms_per_gmac * GMACs + intercept_ms`` (the "MACs alone" baseline)."""

    kind = "macs"
    min_samples = 3

    def __init__(self) -> None:
        pass

    @staticmethod
    def _gmacs(tables: list[list[LayerRecord]]) -> np.ndarray:
        return np.array([sum(r.macs for r in t) for t in tables]) / 1e9

    def _fit(self, tables: list[list[LayerRecord]], y: np.ndarray, **kw: Any) -> None:
        g = self._gmacs(tables)
        c = relative_nnls(np.column_stack([g, np.ones_like(g)]), y)
        self.ms_per_gmac_ = float(c[0])
        self.intercept_ms_ = float(c[1])

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        return self.ms_per_gmac_ * self._gmacs(tables) + self.intercept_ms_

    def report(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "gmacs_per_s": 1e3 / self.ms_per_gmac_ if self.ms_per_gmac_ > 0 else float("inf"),
            "intercept_ms": self.intercept_ms_,
        }

    def _state(self) -> dict[str, Any]:
        return {"ms_per_gmac": self.ms_per_gmac_, "intercept_ms": self.intercept_ms_}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.ms_per_gmac_ = float(state["ms_per_gmac"])
        self.intercept_ms_ = float(state["intercept_ms"])
