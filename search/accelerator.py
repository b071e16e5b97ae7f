"""Co-design of a dense-family network and an in-memory-computing accelerator.

The accelerator model (:mod:`nnflash.calibration.imc`) is whole-network: its tile and PE sizes depend
on every layer, so it does not split into the per-cell tables of the exact method. This module
searches the two levels together by sampling: ``samples`` networks drawn uniformly from the space,
each scored on *every* hardware configuration of the accelerator's knob grid (``ACCEL.json``'s
``knobs``, default subarray 64/128/256 x ADC 3-6 bits x 1-2 bits per cell), all in vectorized calls
of :func:`nnflash.calibration.imc.estimate_grid`. A pair is feasible when it meets the limits on
area, latency, energy, parameters and MACs, and its ADC has at least ``min_adc_bits`` bits (the
model does not know the accuracy a coarse ADC loses, so the resolution is bounded, default 5, V1.3's
ADC). The best feasible pairs by the objective (ties: the smaller chip) are returned.

Sampling finds good designs, not provably the best one: quote ``evaluated`` and ``feasible`` with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnflash.calibration.imc import estimate_grid, knob_grid, meets_limits
from nnflash.calibration.imc_arrays import dense_layer_arrays
from nnflash.calibration.imc_model import AcceleratorConfig
from nnflash.models.space import Space
from nnflash.models.spec import DenseSpec
from nnflash.search.types import Infeasible, Limits, Objective, SearchError

#: Limits the accelerator co-design can check (the rest need a device's cost models).
ACCEL_LIMITS: tuple[str, ...] = ("max_area_mm2", "max_latency_ms", "max_energy_mj", "max_params", "max_macs")


@dataclass(frozen=True)
class AcceleratorDesign:
    """One network on one hardware configuration, with the model's estimates."""

    spec: DenseSpec
    hardware: dict[str, Any]
    objective: float
    metric: float
    area_mm2: float
    latency_ms: float
    energy_mj: float
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_id": self.spec.spec_id,
            "spec": self.spec.to_dict(),
            "hardware": dict(self.hardware),
            "objective": self.objective,
            "metric": self.metric,
            "area_mm2": self.area_mm2,
            "latency_ms": self.latency_ms,
            "energy_mj": self.energy_mj,
            "params": self.params,
            "macs": self.macs,
        }


@dataclass(frozen=True)
class CodesignResult:
    designs: list[AcceleratorDesign]
    evaluated: int
    feasible: int
    seconds: float
    knobs: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def best(self) -> AcceleratorDesign:
        return self.designs[0]


def codesign(
    space: Space,
    accelerator: AcceleratorConfig,
    objective: Objective,
    limits: Limits,
    *,
    samples: int = 20_000,
    seed: int = 0,
    min_adc_bits: int = 5,
    top: int = 10,
    batch: int = 2_000,
) -> CodesignResult:
    """The ``top`` best feasible (network, hardware) pairs of ``samples`` networks x the knob grid
    (see the module docstring). Raises :class:`~nnflash.search.types.Infeasible` when none meets
    the limits."""
    if not isinstance(samples, int) or samples < 1:
        raise SearchError(f"samples: must be a positive integer, got {samples!r}")
    if not isinstance(min_adc_bits, int) or isinstance(min_adc_bits, bool) or min_adc_bits < 1:
        raise SearchError(f"min_adc_bits: must be a positive integer, got {min_adc_bits!r}")
    other = [k for k in limits.given() if k not in ACCEL_LIMITS]
    if other:
        raise SearchError(f"{other[0]}: not available for the accelerator (its limits: {', '.join(ACCEL_LIMITS)})")
    objective.check_space(space)
    grid = accelerator.knob_arrays() or knob_grid()
    if "subarray_rows" in grid and "subarray_cols" not in grid and "subarray_cols" not in accelerator.params:
        grid["subarray_cols"] = grid["subarray_rows"]
    m = len(next(iter(grid.values())))
    lim = limits.given()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    kept: list[tuple[float, float, np.ndarray, int, dict[str, float]]] = []  # (-obj, area, cfg, knob index, figures)
    feasible = 0
    done = 0
    while done < samples:
        n = min(batch, samples - done)
        d, w, t = space.sample_arrays(n, rng)
        metrics = space.metrics(d, w, t)
        value = objective.value(metrics[objective.metric])
        net = dense_layer_arrays(d, w, t, conv=space.conv, input_shape=space.input_shape, num_classes=space.num_classes)
        res = estimate_grid(net, grid, dict(accelerator.params))
        ok = meets_limits(
            res,
            grid,
            max_area_mm2=lim.get("max_area_mm2"),
            max_latency_ms=lim.get("max_latency_ms"),
            max_energy_mj=lim.get("max_energy_mj"),
            min_adc_bits=min_adc_bits,
        )
        for key in ("max_params", "max_macs"):
            if key in lim:
                ok &= (metrics[key[4:]] <= lim[key])[:, None]
        feasible += int(ok.sum())
        rows, cols = np.nonzero(ok)
        if rows.size:
            order = np.lexsort((res["area_mm2"][rows, cols], -value[rows]))[: top * m]
            for i in order:
                r, c = int(rows[i]), int(cols[i])
                figures = {
                    "area_mm2": float(res["area_mm2"][r, c]),
                    "latency_ms": float(res["latency_ms"][r, c]),
                    "energy_mj": float(res["energy_mj"][r, c]),
                    "metric": float(metrics[objective.metric][r]),
                    "params": float(metrics["params"][r]),
                    "macs": float(metrics["macs"][r]),
                }
                cfg = np.array([d[r], w[r], t[r]])
                kept.append((-float(value[r]), figures["area_mm2"], cfg, c, figures))
            kept.sort(key=lambda k: (k[0], k[1]))
            kept = _distinct(kept)[:top]
        done += n
    if not kept:
        raise Infeasible(
            f"no network of {samples:,} samples of space {space.name!r} on any of the {m} hardware "
            f"configurations meets the limits with ADCs of at least {min_adc_bits} bits"
        )
    designs = []
    for neg, _, cfg, c, fig in kept:
        hw = {k: (v[c].item() if hasattr(v[c], "item") else v[c]) for k, v in grid.items()}
        designs.append(
            AcceleratorDesign(
                spec=space.to_spec(cfg[0], cfg[1], cfg[2], seed=seed),
                hardware=hw,
                objective=-neg,
                metric=fig["metric"],
                area_mm2=fig["area_mm2"],
                latency_ms=fig["latency_ms"],
                energy_mj=fig["energy_mj"],
                params=int(fig["params"]),
                macs=int(fig["macs"]),
            )
        )
    knobs = {k: sorted({x.item() for x in v}) for k, v in grid.items()}
    return CodesignResult(designs, samples * m, feasible, time.perf_counter() - t0, knobs)


def _distinct(kept: list[tuple[float, float, np.ndarray, int, dict[str, float]]]) -> list[Any]:
    seen: set[tuple[bytes, int]] = set()
    out = []
    for item in kept:
        key = (item[2].tobytes(), item[3])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out
