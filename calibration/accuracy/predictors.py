"""The accuracy predictors: ``flash`` (NN-Degree), ``nnmass`` (NN-Mass) and ``multi`` (many features).

``flash`` and ``nnmass`` -- one topology metric ``x`` through a monotone saturating curve. FLASH's
own equation is not available to us (only the paper's abstract could be read), so the form is ours:
a four-parameter logistic in the standardized logarithm of the metric,

    u = (log(1 + x) - m) / s                     (m, s: mean and std over the fitted specs)
    acc(x) = lo + (hi - lo) / (1 + exp(-k (u - u0)))

with ``0 <= lo, hi <= 1`` (predictions are fractions by construction), ``|k| <= 8`` (no step
functions from 25 points) and ``|u0| <= 4``. It saturates at both ends (tiny networks at ``lo``,
large ones at ``hi``), as accuracy does against capacity, and is monotone in ``x``: it ranks networks
exactly as the metric does (or exactly reversed, should the data say so -- the direction is fitted,
not assumed), and the trainings set only its scale (the MAE), not its order. ``log(1 + x)`` because
NN-Mass is 0 for a network without long-range skips. The fit is robust
(``scipy.optimize.least_squares`` with a soft-L1 loss of scale ``robust_scale`` = 10 accuracy
points: quadratic for ordinary seed noise, linear beyond, so one diverged or broken training, tens
of points off, does not bend the curve) and deterministic (a fixed grid of eight starting points;
the best one wins). Why 10 points and not 1: on the tiny test task (tests/unit/fixtures/accuracy),
where seeds of one network differ by up to 20 points, a 1-point scale (nearly L1) jumped between
local optima when one training was replaced by an outlier (median prediction change 3-4 points),
while 10 points moved predictions by under 1 point with the same cross-validated MAE.

``multi`` -- ridge regression on the logit of the accuracy, over standardized features: log NN-Degree,
log(1 + NN-Mass), log params, log MACs, and the zero-cost proxies (log synflow, NASWOT, log grad_norm,
log snip, jacob_cov). Why this model for about 25 samples: the features are strongly correlated
(NN-Degree, parameters, MACs and synflow all measure size), and ridge shrinks correlated coefficients
together instead of letting them cancel; its strength is chosen by exact leave-one-out error (a
closed form through the hat matrix, no random splits); being linear on the logit it cannot
over-fit 25 points the way a GP with learned length scales over nine dimensions can, its
extrapolation stays monotone in each feature, and predictions stay in (0, 1). It reorders networks:
a combination of size, topology and trainability at initialization ranks differently from any single
one. Standardized features are clipped to +-4 so one extreme proxy value cannot swing a prediction.
Uncertainty per prediction: the Bayesian-ridge predictive standard deviation on the logit scale,
``sigma * sqrt(1 + 1/n + z^T (Z^T Z + alpha I)^-1 z)`` with ``sigma^2`` the residual variance over the
residual degrees of freedom, mapped to accuracy by the logistic's slope ``p (1 - p)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Optional

import numpy as np

from nnflash.calibration.accuracy.base import (
    AccuracyModel,
    AccuracyModelError,
    register_accuracy_model,
    spec_features,
)
from nnflash.models.proxies import PROXY_NAMES
from nnflash.models.spec import AnySpec

_K_MAX = 8.0
_U0_MAX = 4.0
_LOGIT_EPS = 0.005


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.log(q / (1 - q))


def _curve(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    lo, hi, k, u0 = theta
    return lo + (hi - lo) * _sigmoid(k * (u - u0))


def _curve_jac(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    lo, hi, k, u0 = theta
    s = _sigmoid(k * (u - u0))
    ds = (hi - lo) * s * (1 - s)
    return np.column_stack([1 - s, s, ds * (u - u0), -ds * k])


class _SaturatingCurve(AccuracyModel):
    """A monotone logistic in the standardized log of one topology metric (see the module doc)."""

    metric: ClassVar[str] = ""
    metric_label: ClassVar[str] = ""

    def __init__(self, robust_scale: float = 0.1) -> None:
        self.robust_scale = robust_scale

    def _validate_params(self) -> None:
        if not isinstance(self.robust_scale, (int, float)) or not 0 < self.robust_scale <= 1:
            raise AccuracyModelError(f"{self.kind}: robust_scale must be in (0, 1], got {self.robust_scale!r}")

    def _x(self, specs: list[AnySpec]) -> np.ndarray:
        x = spec_features(specs)[self.metric]
        bad = np.flatnonzero(~np.isfinite(x) | (x < 0))
        if len(bad):
            raise AccuracyModelError(
                f"{self.kind}: spec {specs[bad[0]].spec_id} ({specs[bad[0]].family}) has no {self.metric_label} "
                "(the dense and mlp families have one)"
            )
        return np.log1p(x)

    def _fit(self, specs: list[AnySpec], y: np.ndarray, proxies: Optional[np.ndarray]) -> None:
        from scipy.optimize import least_squares

        lx = self._x(specs)
        m, s = float(lx.mean()), float(lx.std())
        s = s if s > 1e-12 else 1.0
        u = (lx - m) / s
        lo_y, hi_y = float(y.min()), float(y.max())
        best: Optional[tuple[float, np.ndarray]] = None
        bounds = ([0.0, 0.0, -_K_MAX, -_U0_MAX], [1.0, 1.0, _K_MAX, _U0_MAX])
        for k0 in (-2.0, -0.5, 0.5, 2.0):
            for u00 in (-0.5, 0.5):
                lo0, hi0 = (lo_y, hi_y) if k0 > 0 else (hi_y, lo_y)
                x0 = np.clip(
                    [lo0, hi0, k0, u00], [1e-6, 1e-6, -_K_MAX, -_U0_MAX], [1 - 1e-6, 1 - 1e-6, _K_MAX, _U0_MAX]
                )
                r = least_squares(
                    lambda t: _curve(t, u) - y,
                    x0,
                    jac=lambda t: _curve_jac(t, u),
                    max_nfev=100,
                    bounds=bounds,
                    loss="soft_l1",
                    f_scale=float(self.robust_scale),
                    method="trf",
                )
                cost = float(r.cost)
                if best is None or cost < best[0] - 1e-15:
                    best = (cost, r.x)
        assert best is not None
        self.theta_ = [float(v) for v in best[1]]
        self.log_mean_ = m
        self.log_std_ = s

    def _predict(self, specs: list[AnySpec], proxies: Optional[np.ndarray]) -> tuple[np.ndarray, None]:
        u = (self._x(specs) - self.log_mean_) / self.log_std_
        return _curve(np.array(self.theta_), u), None

    def _state(self) -> dict[str, Any]:
        lo, hi, k, u0 = self.theta_
        return {
            "form": "lo + (hi - lo) / (1 + exp(-k * ((log(1 + x) - log_mean) / log_std - u0)))",
            "metric": self.metric,
            "lo": lo,
            "hi": hi,
            "k": k,
            "u0": u0,
            "log_mean": self.log_mean_,
            "log_std": self.log_std_,
            "direction": "increasing" if (hi - lo) * k >= 0 else "decreasing",
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        theta = [float(state[k]) for k in ("lo", "hi", "k", "u0")]
        if not all(np.isfinite(theta)) or not float(state["log_std"]) > 0:
            raise AccuracyModelError(f"corrupt {self.kind} state (non-finite parameters)")
        self.theta_ = theta
        self.log_mean_ = float(state["log_mean"])
        self.log_std_ = float(state["log_std"])


@register_accuracy_model
class FlashAccuracyModel(_SaturatingCurve):
    """Accuracy as a monotone saturating function of NN-Degree (FLASH's premise; our form)."""

    kind = "flash"
    metric = "nn_degree"
    metric_label = "NN-Degree"


@register_accuracy_model
class NnMassAccuracyModel(_SaturatingCurve):
    """Accuracy as a monotone saturating function of NN-Mass."""

    kind = "nnmass"
    metric = "nn_mass"
    metric_label = "NN-Mass"


#: Features of ``multi``, in order.
MULTI_FEATURES = (
    "log_nn_degree",
    "log1p_nn_mass",
    "log_params",
    "log_macs",
    "log_synflow",
    "naswot",
    "log_grad_norm",
    "log_snip",
    "jacob_cov",
)
_ALPHAS = tuple(float(a) for a in np.logspace(-2, 3, 26))


def multi_features(specs: list[AnySpec], proxies: np.ndarray) -> np.ndarray:
    """``(n, len(MULTI_FEATURES))`` raw feature matrix of ``multi``."""
    f = spec_features(specs)
    bad = np.flatnonzero(~np.isfinite(f["nn_degree"]))
    if len(bad):
        raise AccuracyModelError(
            f"multi: spec {specs[bad[0]].spec_id} ({specs[bad[0]].family}) has no NN-Degree "
            "(the dense and mlp families have one)"
        )
    p = {name: proxies[:, j] for j, name in enumerate(PROXY_NAMES)}

    def log(v: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(v, 1e-300))

    return np.column_stack(
        [
            log(np.maximum(f["nn_degree"], 1e-12)),
            np.log1p(f["nn_mass"]),
            log(f["params"]),
            log(np.maximum(f["macs"], 1.0)),
            log(p["synflow"]),
            p["naswot"],
            log(p["grad_norm"]),
            log(p["snip"]),
            p["jacob_cov"],
        ]
    )


@register_accuracy_model
class MultiAccuracyModel(AccuracyModel):
    """Ridge on the logit of accuracy over topology, size and zero-cost-proxy features (module doc)."""

    kind = "multi"
    min_samples = 10
    needs_proxies = True

    def __init__(self, alpha: Optional[float] = None, clip_z: float = 4.0) -> None:
        self.alpha = alpha
        self.clip_z = clip_z

    def _validate_params(self) -> None:
        if self.alpha is not None and (not isinstance(self.alpha, (int, float)) or not self.alpha > 0):
            raise AccuracyModelError(
                f"multi: alpha must be a positive number or None (chosen by LOO), got {self.alpha!r}"
            )
        if not isinstance(self.clip_z, (int, float)) or not self.clip_z > 0:
            raise AccuracyModelError(f"multi: clip_z must be a positive number, got {self.clip_z!r}")

    def _z(self, raw: np.ndarray) -> np.ndarray:
        z = (raw - np.array(self.feature_mean_)) / np.array(self.feature_std_)
        return np.clip(z, -self.clip_z, self.clip_z)

    @staticmethod
    def _solve(z: np.ndarray, t: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and ``(Z^T Z + alpha I)^-1`` (``z`` and ``t`` centred)."""
        inv = np.linalg.inv(z.T @ z + alpha * np.eye(z.shape[1]))
        return inv @ z.T @ t, inv

    def _fit(self, specs: list[AnySpec], y: np.ndarray, proxies: Optional[np.ndarray]) -> None:
        assert proxies is not None
        raw = multi_features(specs, proxies)
        mean, std = raw.mean(0), raw.std(0)
        std = np.where(std > 1e-12, std, 1.0)
        self.feature_mean_ = [float(v) for v in mean]
        self.feature_std_ = [float(v) for v in std]
        z = self._z(raw)
        zm = z.mean(0)
        zc = z - zm
        t = _logit(y)
        tm = float(t.mean())
        tc = t - tm
        n = len(t)
        if self.alpha is None:
            best = (np.inf, _ALPHAS[0])
            for a in _ALPHAS:
                coef, inv = self._solve(zc, tc, a)
                h = np.einsum("ij,jk,ik->i", zc, inv, zc) + 1.0 / n
                loo = (tc - zc @ coef) / np.maximum(1 - h, 1e-9)
                err = float(np.mean(loo**2))
                if err < best[0] - 1e-15:
                    best = (err, a)
            alpha = best[1]
        else:
            alpha = float(self.alpha)
        coef, inv = self._solve(zc, tc, alpha)
        resid = tc - zc @ coef
        dof = max(1.0, n - 1 - float(np.trace(zc @ inv @ zc.T)))
        self.alpha_ = float(alpha)
        self.coef_ = [float(v) for v in coef]
        self.z_mean_ = [float(v) for v in zm]
        self.intercept_ = tm
        self.sigma_ = float(np.sqrt(np.sum(resid**2) / dof))
        self.inv_gram_ = inv.tolist()
        self.n_fit_ = n

    def _predict(self, specs: list[AnySpec], proxies: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        assert proxies is not None
        zc = self._z(multi_features(specs, proxies)) - np.array(self.z_mean_)
        logit = self.intercept_ + zc @ np.array(self.coef_)
        p = _sigmoid(logit)
        var = 1.0 + 1.0 / self.n_fit_ + np.einsum("ij,jk,ik->i", zc, np.array(self.inv_gram_), zc)
        return p, p * (1 - p) * self.sigma_ * np.sqrt(var)

    def _state(self) -> dict[str, Any]:
        return {
            "form": "sigmoid(intercept + sum(coef * (clip((f - feature_mean) / feature_std) - z_mean)))",
            "features": list(MULTI_FEATURES),
            "feature_mean": self.feature_mean_,
            "feature_std": self.feature_std_,
            "z_mean": self.z_mean_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "alpha": self.alpha_,
            "sigma_logit": self.sigma_,
            "inv_gram": self.inv_gram_,
            "n_fit": self.n_fit_,
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        if list(state["features"]) != list(MULTI_FEATURES):
            raise AccuracyModelError(
                f"multi: saved with features {state['features']}, this nnflash uses {list(MULTI_FEATURES)}"
            )
        nf = len(MULTI_FEATURES)
        vecs = {k: [float(v) for v in state[k]] for k in ("feature_mean", "feature_std", "z_mean", "coef")}
        inv = np.array(state["inv_gram"], dtype=float)
        if any(len(v) != nf for v in vecs.values()) or inv.shape != (nf, nf):
            raise AccuracyModelError("multi: corrupt state (wrong number of coefficients)")
        self.feature_mean_ = vecs["feature_mean"]
        self.feature_std_ = vecs["feature_std"]
        self.z_mean_ = vecs["z_mean"]
        self.coef_ = vecs["coef"]
        self.intercept_ = float(state["intercept"])
        self.alpha_ = float(state["alpha"])
        self.sigma_ = float(state["sigma_logit"])
        self.inv_gram_ = inv.tolist()
        self.n_fit_ = int(state["n_fit"])

    def report(self) -> dict[str, Any]:
        """Coefficients per feature (on standardized features and the logit scale) and alpha."""
        self._check_fitted()
        return {
            "alpha": self.alpha_,
            "coefficients": dict(zip(MULTI_FEATURES, self.coef_)),
            "intercept_logit": self.intercept_,
            "sigma_logit": self.sigma_,
        }
