"""A roofline with known parameters, for tests and examples: measurements without a device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnflash.calibration.roofline import ROOF_COMPUTE, ROOF_INDEX, ROOF_KINDS, RooflineLatencyModel

#: Physical numbers of the known roofline (GFLOP/s, GB/s, us per operator, ms).
DEFAULT_TRUTH: dict[str, Any] = {
    "gflops": {"conv": 200.0, "pointwise": 150.0, "depthwise": 20.0, "linear": 50.0, "conv_im2col": 120.0},
    "gbps": {
        "conv": 60.0,
        "pointwise": 60.0,
        "depthwise": 40.0,
        "linear": 30.0,
        "bn": 25.0,
        "gather": 8.0,
        "pool": 30.0,
        "add": 25.0,
        "conv_im2col": 60.0,
        "im2col": 15.0,
        "reorder": 20.0,
    },
    "overhead_us_per_op": 3.0,
    "constant_ms": 0.05,
}


def known_roofline(
    truth: Mapping[str, Any] | None = None, *, conv_algorithm: str = "nchwc16", smoothness: float = 4.0
) -> RooflineLatencyModel:
    """A :class:`RooflineLatencyModel` that predicts with the given physical numbers (no fit)."""
    t = dict(DEFAULT_TRUTH if truth is None else truth)
    m = RooflineLatencyModel(conv_algorithm=conv_algorithm, smoothness=smoothness)
    r = np.ones(len(ROOF_KINDS))
    for k in ROOF_COMPUTE:
        r[ROOF_INDEX[k]] = 1e3 / float(t["gflops"][k])
    b = np.array([1e3 / float(t["gbps"][k]) for k in ROOF_KINDS])
    m.conv_algorithm_ = conv_algorithm
    m.ms_per_gflop_ = r
    m.ms_per_gb_ = b
    m.overhead_ms_ = float(t["overhead_us_per_op"]) / 1e3
    m.constant_ms_ = float(t["constant_ms"])
    m.train_rmspe_ = 0.0
    m.metadata_ = {"synthetic": True}
    return m


def synthetic_latency(
    specs: Sequence[Any], *, noise: float = 0.0, seed: int = 0, model: RooflineLatencyModel | None = None
) -> np.ndarray:
    """Latency (ms) of ``specs`` under the known roofline, times ``1 + noise * N(0, 1)``."""
    m = model if model is not None else known_roofline()
    y = m.predict(list(specs))
    if noise:
        y = y * (1 + noise * np.random.default_rng(seed).standard_normal(len(y)))
    return y


def synthetic_energy(
    specs: Sequence[Any],
    latency_ms: Any,
    *,
    idle_power_w: float = 2.0,
    pj_per_mac: float = 50.0,
    pj_per_byte: float = 20.0,
) -> np.ndarray:
    """Energy (mJ) under a known energy model."""
    from nnflash.calibration.features import as_layer_tables

    tables = as_layer_tables(list(specs))
    macs = np.array([sum(r.macs for r in t) for t in tables])
    nbytes = np.array([sum(r.bytes for r in t) for t in tables])
    return idle_power_w * np.asarray(latency_ms, float) + pj_per_mac * macs * 1e-9 + pj_per_byte * nbytes * 1e-9
