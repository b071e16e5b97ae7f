"""Least-squares helpers shared by the cost models."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def relative_nnls(a: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Non-negative coefficients ``c`` of the rows ``a`` fitted on the *relative* error, so that small
    and large targets count the same::

        argmin_{c >= 0} sum_i ((a_i . c) / y_i - 1)^2 + ridge * |s * c|^2

    where ``s`` scales every column of ``a / y`` to a largest magnitude of 1 (``ridge`` is a pull of
    the scaled coefficients towards 0)."""
    ar = a / y[:, None]
    scale = np.abs(ar).max(0)
    scale = np.where(scale > 0, scale, 1.0)
    m = ar / scale
    rhs = np.ones(len(y))
    if ridge > 0:
        m = np.vstack([m, np.sqrt(ridge) * np.eye(m.shape[1])])
        rhs = np.concatenate([rhs, np.zeros(m.shape[1])])
    c, _ = nnls(m, rhs, maxiter=50 * m.shape[1])
    return c / scale
