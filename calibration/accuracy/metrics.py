"""How well predicted accuracies match trained ones; cross-validation; the predicted-vs-trained plot.

Metrics (:func:`accuracy_metrics`), accuracies as fractions in, errors in accuracy *points* out:

- ``spearman``, ``kendall``: rank correlations (``scipy.stats``; Kendall's tau-b); NaN with fewer
  than 3 samples or constant values;
- ``mae_points``: ``100 * mean |pred - y|``; ``rmse_points``: ``100 * sqrt(mean (pred - y)^2)``;
- ``n``: number of samples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.calibration.accuracy.base import AccuracyModelError
from nnflash.calibration.crossval import kfold_indices

METRIC_NAMES = ("spearman", "kendall", "mae_points", "rmse_points", "n")


def rank_correlations(a: Any, b: Any) -> tuple[float, float]:
    """Spearman and Kendall (tau-b) of two equally long arrays; NaN where undefined."""
    x, y = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    from scipy.stats import kendalltau, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic), float(kendalltau(x, y).statistic)


def accuracy_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """The project's accuracy-prediction metrics of ``y_pred`` against trained ``y_true``."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise AccuracyModelError(f"metrics: {len(y)} trained accuracies but {len(p)} predictions")
    if len(y) == 0:
        raise AccuracyModelError("metrics: no samples")
    rho, tau = rank_correlations(y, p)
    err = p - y
    return {
        "spearman": rho,
        "kendall": tau,
        "mae_points": float(100 * np.mean(np.abs(err))),
        "rmse_points": float(100 * np.sqrt(np.mean(err**2))),
        "n": float(len(y)),
    }


def format_accuracy_metrics(m: Mapping[str, float]) -> str:
    """One line: ``Spearman 0.861  Kendall 0.690  MAE 0.74 points  (n=25)``."""
    return (
        f"Spearman {m['spearman']:.3f}  Kendall {m['kendall']:.3f}  MAE {m['mae_points']:.2f} points  (n={int(m['n'])})"
    )


def cv_folds(n: int) -> int:
    """Folds used by ``accuracy fit``: leave-one-out up to 30 samples, else 10."""
    return n if n <= 30 else 10


def cross_val_predict_accuracy(
    make_model: Callable[[], Any],
    X: Sequence[Any],
    y: Any,
    *,
    proxies: Optional[Sequence[Mapping[str, float]]] = None,
    k: Optional[int] = None,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold predictions (every spec predicted by a predictor fitted without it)."""
    items = list(X)
    yy = np.asarray(y, dtype=np.float64)
    n = len(items)
    rows = list(proxies) if proxies is not None else None
    out = np.full(n, np.nan)
    for train, test in kfold_indices(n, k if k is not None else cv_folds(n), seed):
        model = make_model().fit(
            [items[i] for i in train], yy[train], proxies=[rows[i] for i in train] if rows is not None else None
        )
        out[test] = model.predict(
            [items[i] for i in test], proxies=[rows[i] for i in test] if rows is not None else None
        )
    return out


def cross_validate_accuracy(
    make_model: Callable[[], Any],
    X: Sequence[Any],
    y: Any,
    *,
    proxies: Optional[Sequence[Mapping[str, float]]] = None,
    k: Optional[int] = None,
    seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of :func:`cross_val_predict_accuracy` (with ``folds``) and the predictions."""
    n = len(list(X))
    pred = cross_val_predict_accuracy(make_model, X, y, proxies=proxies, k=k, seed=seed)
    m = accuracy_metrics(y, pred)
    m["folds"] = float(min(k if k is not None else cv_folds(n), n))
    return m, pred


def plot_predicted_vs_trained(
    y_true: Any, y_pred: Any, path: str | Path, *, title: str = "predicted vs trained accuracy"
) -> Path:
    """Scatter of (cross-validated) predictions against trained accuracies, in percent, with the
    identity line and a +-1 point band; saved as PNG with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yt, yp = 100 * np.asarray(y_true, float), 100 * np.asarray(y_pred, float)
    m = accuracy_metrics(yt / 100, yp / 100)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(
        yt,
        yp,
        s=14,
        alpha=0.75,
        label=f"Spearman {m['spearman']:.3f}, Kendall {m['kendall']:.3f}, MAE {m['mae_points']:.2f} pt",
    )
    lo = float(min(yt.min(), yp.min())) - 1
    hi = float(max(yt.max(), yp.max())) + 1
    grid = np.linspace(lo, hi, 2)
    ax.plot(grid, grid, "k-", lw=0.8)
    ax.fill_between(grid, grid - 1, grid + 1, color="gray", alpha=0.2, label="+-1 point")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="trained accuracy (%)", ylabel="predicted accuracy (%)", title=title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
