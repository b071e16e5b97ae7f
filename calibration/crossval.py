"""Accuracy metrics of latency/energy predictions, cross-validation, and the predicted-vs-measured
plot.

Metrics (:func:`report_metrics`), with relative error ``e_i = (pred_i - y_i) / y_i``:

- ``rmspe``: root mean square percentage error, ``100 * sqrt(mean(e^2))`` (percent);
- ``mape``: mean absolute percentage error, ``100 * mean(|e|)`` (percent);
- ``within_5`` / ``within_10``: share of samples with ``|e| <= 0.05`` / ``0.10`` (0..1);
- ``spearman``: Spearman rank correlation of predicted and measured values
  (``scipy.stats.spearmanr``; NaN with fewer than 3 samples or constant values);
- ``n``: number of samples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnflash.calibration.errors import CostModelError

METRIC_NAMES = ("rmspe", "mape", "within_5", "within_10", "spearman", "n")


def report_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """The project's accuracy metrics of ``y_pred`` against measured ``y_true`` (see module doc)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise CostModelError(f"metrics: {len(y)} measured values but {len(p)} predictions")
    if len(y) == 0:
        raise CostModelError("metrics: no samples")
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise CostModelError("metrics: measured values must be finite and positive")
    e = (p - y) / y
    rho = math.nan
    if len(y) >= 3 and np.ptp(y) > 0 and np.ptp(p) > 0:
        from scipy.stats import spearmanr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(spearmanr(y, p).statistic)
    return {
        "rmspe": float(100 * np.sqrt(np.mean(e**2))),
        "mape": float(100 * np.mean(np.abs(e))),
        "within_5": float(np.mean(np.abs(e) <= 0.05 + 1e-12)),
        "within_10": float(np.mean(np.abs(e) <= 0.10 + 1e-12)),
        "spearman": rho,
        "n": float(len(y)),
    }


def format_metrics(m: dict[str, float]) -> str:
    """One line: ``RMSPE 4.1%  MAPE 3.2%  within 5% 78%  within 10% 96%  Spearman 0.981  (n=100)``."""
    return (
        f"RMSPE {m['rmspe']:.1f}%  MAPE {m['mape']:.1f}%  within 5% {100 * m['within_5']:.0f}%  "
        f"within 10% {100 * m['within_10']:.0f}%  Spearman {m['spearman']:.3f}  (n={int(m['n'])})"
    )


def kfold_indices(n: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) index splits of ``range(n)`` after a seeded shuffle; ``k >= n`` is
    leave-one-out."""
    if n < 2:
        raise CostModelError(f"cross-validation needs at least 2 samples, got {n}")
    if k < 2:
        raise CostModelError(f"cross-validation needs k >= 2 folds, got {k}")
    k = min(k, n)
    perm = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(perm, k)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1 :])), np.sort(f)) for i, f in enumerate(folds)]


def cross_val_predict(
    make_model: Callable[[], Any], X: Sequence[Any], y: Any, *, k: int = 5, seed: int = 0, **fit_kwargs: Any
) -> np.ndarray:
    """Out-of-fold predictions: every sample predicted by a model fitted without it.

    ``make_model()`` returns a fresh unfitted model; ``fit_kwargs`` values that are arrays of length
    ``n`` (e.g. ``latency_ms`` for the energy model) are split with ``X``.
    """
    items = list(X)
    yy = np.asarray(y, dtype=np.float64)
    n = len(items)
    out = np.full(n, np.nan)
    for train, test in kfold_indices(n, k, seed):
        kw = {key: (np.asarray(v)[train] if np.ndim(v) == 1 and len(v) == n else v) for key, v in fit_kwargs.items()}
        model = make_model().fit([items[i] for i in train], yy[train], **kw)
        out[test] = model.predict([items[i] for i in test])
    return out


def cross_validate(
    make_model: Callable[[], Any], X: Sequence[Any], y: Any, *, k: int = 5, seed: int = 0, **fit_kwargs: Any
) -> dict[str, float]:
    """Metrics of :func:`cross_val_predict` (``k >= len(X)`` is leave-one-out); adds ``folds``."""
    pred = cross_val_predict(make_model, X, y, k=k, seed=seed, **fit_kwargs)
    m = report_metrics(y, pred)
    m["folds"] = float(min(k, len(list(X))))
    return m


def leave_one_out(make_model: Callable[[], Any], X: Sequence[Any], y: Any, **fit_kwargs: Any) -> dict[str, float]:
    items = list(X)
    return cross_validate(make_model, items, y, k=len(items), **fit_kwargs)


def plot_predicted_vs_measured(
    y_true: Any,
    y_pred: Any,
    path: str | Path,
    *,
    title: str = "predicted vs measured",
    unit: str = "ms",
    labels: dict[str, Any] | None = None,
) -> Path:
    """Scatter of predictions against measurements (log-log) with the +-10% band, saved as PNG.
    ``labels`` maps a series name to ``(y_true, y_pred)`` to overlay more series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"model": (y_true, y_pred)}
    if labels:
        series.update(labels)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = math.inf, 0.0
    for name, (yt, yp) in series.items():
        yt, yp = np.asarray(yt, float), np.asarray(yp, float)
        m = report_metrics(yt, yp)
        ax.scatter(
            yt, yp, s=12, alpha=0.7, label=f"{name}: {100 * m['within_10']:.0f}% within 10%, rho {m['spearman']:.3f}"
        )
        lo = min(lo, float(np.min(yt)), float(np.min(yp)))
        hi = max(hi, float(np.max(yt)), float(np.max(yp)))
    lo, hi = max(lo * 0.8, 1e-9), hi * 1.25
    grid = np.geomspace(lo, hi, 50)
    ax.plot(grid, grid, "k-", lw=0.8)
    ax.fill_between(grid, grid * 0.9, grid * 1.1, color="gray", alpha=0.2, label="+-10%")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel=f"measured ({unit})",
        ylabel=f"predicted ({unit})",
        title=title,
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
