"""An analytical model of an in-memory-computing (IMC) accelerator: area, energy and latency.

Resistive (RRAM 1T1R) crossbars in processing elements (PEs) and tiles, modelled after DNN+NeuroSim
V1.3 and validated against its published VGG-8 run (``benchmarks/imc_neurosim.py``,
``docs/accelerator.md``). Everything is numpy over ``n`` configurations at once: a network is a row
of :class:`~nnflash.calibration.imc_arrays.LayerArrays` and every parameter may be a scalar or an
``(n,)`` array, so a search scores a grid of networks and hardware knobs in one call of
:func:`estimate`.

Mapping (NeuroSim V1.3's chip floor plan)
-----------------------------------------
A layer's weight matrix has ``R = k^2 * C_in`` rows and ``C = C_out * ceil(weight_bits / cell_bits)``
columns. Layers whose ``k^2`` is the network's most common one (``num_pe``, 9 for 3x3) and whose
``C_in >= subarray_rows`` and ``C >= subarray_cols`` use the *novel* mapping: one PE per kernel
position, tiles of ``num_pe`` PEs of ``pe x pe`` cells, ``ceil(C_in/pe) * ceil(C/pe)`` tiles. The
others use *conventional* tiles of ``t x t`` cells in PEs of ``pe_cm x pe_cm``,
``ceil(R/t) * ceil(C/t)`` tiles. ``pe``, ``t`` and ``pe_cm`` are powers of two chosen, as NeuroSim
does, to maximise the utilization of the cells. Weights are duplicated into unused PEs and
subarrays of a layer's tiles (``floor(available / needed)`` along rows and columns when the matrix
fits the tile or PE in one direction), which processes that many input vectors at once: the
layer's speed-up. Pipelined mode duplicates further, to ``ceil((IFM / ceil(IFM_0 / 8))^2)``.

Costs
-----
- Area: cells (``cell_area_f2 * F^2``), ADCs (one per ``columns_per_adc`` columns; ISAAC's SAR
  areas, interpolated in bits and scaled by ``(tech/32)^2``), accumulation (a shift-adder per ADC
  and the adder trees of every tile, ISAAC's shift-add unit), and "other": row/column periphery per
  subarray line (calibrated), the global buffer (ISAAC's eDRAM per 64 KB) and the interconnect
  (ISAAC's router per 4 tiles).
- Dynamic energy: ADC conversions (NeuroSim's multilevel sense amp: ``(a (L-1) + b / R_col) * T_col``
  per conversion, ``R_col`` from the active rows, their mean cell conductance and the input bit
  density), bit-line charging of the crossbar, shift-adds and adder trees (ISAAC's shift-add), the
  buffer (ISAAC's eDRAM per bit), the interconnect (per bit per hop, calibrated) and the periphery
  per line activation (calibrated). Leakage: power per mm^2 (calibrated) times the latency.
- Latency per layer: ``vectors / speed-up * activation_bits * columns_per_adc * clock_ns`` for the
  crossbars and ADCs, an adder-tree pass per vector, the buffer (bits / bandwidth, calibrated) and
  the interconnect (SIAM's mesh: ``(bits + w) / w`` cycles of a ``w``-bit channel plus
  ``h + 4 (h + 1) + 3`` cycles for ``h`` hops). Layer-by-layer mode sums the layers; in pipelined
  mode the clock is the slowest layer and an image passes every layer once per clock.

The six calibrated constants (:data:`CALIBRATED`) are the only numbers fitted to NeuroSim's
output; :mod:`nnflash.calibration.imc_model` fits them and the defaults below are that fit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnflash.calibration.errors import CostModelError
from nnflash.calibration.imc_arrays import LayerArrays


@dataclass(frozen=True)
class Param:
    """One named parameter of the IMC model: default, unit, allowed range and what it is."""

    default: Any
    unit: str
    help: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    power_of_two: bool = False
    choices: tuple[str, ...] = ()


#: Every parameter, with its V1.3 default. Hardware knobs first, then physical constants from the
#: literature (ISAAC at 32 nm, NeuroSim, SIAM), then the calibrated constants.
PARAMS: dict[str, Param] = {
    "subarray_rows": Param(128, "rows", "crossbar (subarray) rows", 16, 2048, True, True),
    "subarray_cols": Param(128, "columns", "crossbar (subarray) columns", 16, 2048, True, True),
    "adc_bits": Param(5, "bits", "ADC resolution (levels 2^bits)", 1, 10, True),
    "cell_bits": Param(2, "bits", "bits stored per cell", 1, 8, True),
    "weight_bits": Param(8, "bits", "weight precision", 1, 16, True),
    "activation_bits": Param(8, "bits", "activation precision, read bit-serially", 1, 16, True),
    "columns_per_adc": Param(8, "columns", "columns sharing one ADC through a multiplexer", 1, 256, True, True),
    "tech_nm": Param(22.0, "nm", "technology node (feature size F)", 7, 65),
    "clock_ns": Param(2.05, "ns", "sensing cycle: precharge, column read and ADC (V1.3: 2.05 ns)", 0.01, 1000),
    "mode": Param("layer", "", "layer (layer-by-layer) or pipeline", choices=("layer", "pipeline")),
    "pipeline_speedup_degree": Param(8, "", "pipelined mode: how far large layers are duplicated", 1, 64, True),
    "adc_time_ns": Param(1.0, "ns", "ADC column sensing time T_col (NeuroSim: 1 ns at <= 22 nm)", 0.01, 100),
    "adc_energy_pj": Param(0.0, "pJ", "energy per conversion; 0: NeuroSim's multilevel sense-amp formula", 0.0, 1000),
    "cell_area_f2": Param(48.0, "F^2", "cell area (1T1R: 4F x 12F)", 1, 1000),
    "cell_r_on_ohm": Param(6000.0, "ohm", "cell on-state resistance", 1, 1e9),
    "cell_on_off_ratio": Param(17.0, "", "cell off/on resistance ratio", 1, 1e6),
    "read_voltage_v": Param(0.5, "V", "read voltage on the bit lines", 0.01, 5),
    "wire_cap_ff_per_um": Param(0.2, "fF/um", "wire capacitance", 0.001, 10),
    "shift_add_energy_pj": Param(0.021, "pJ", "energy per shift-add (ISAAC, 32 nm)", 0, 100),
    "shift_add_area_um2": Param(60.0, "um^2", "area of a shift-add unit (ISAAC, 32 nm)", 0, 1e5),
    "buffer_energy_pj_per_bit": Param(20.45 / 256, "pJ/bit", "buffer access (ISAAC eDRAM, 32 nm)", 0, 100),
    "buffer_area_mm2_per_64kb": Param(0.083, "mm^2", "buffer area per 64 KB (ISAAC eDRAM, 32 nm)", 0, 100),
    "router_area_mm2": Param(0.15, "mm^2", "router area, one per 4 tiles (ISAAC, 32 nm)", 0, 100),
    "noc_channel_bits": Param(32, "bits", "interconnect channel width (SIAM)", 1, 4096, True),
    "noc_clock_ghz": Param(1.0, "GHz", "interconnect clock (SIAM)", 0.01, 100),
    # calibrated constants (defaults: the fit to DNN+NeuroSim V1.3's VGG-8 run, see imc_model)
    "input_bit_density": Param(0.1545, "", "share of input bits that are 1 (sets R_col)", 1e-6, 1),
    "periph_area_um2_per_line": Param(24.45, "um^2", "row/column periphery per subarray line (22 nm)", 0, 1e6),
    "periph_energy_fj_per_line": Param(21.88, "fJ", "periphery energy per line activation (22 nm)", 0, 1e6),
    "noc_energy_pj_per_bit_hop": Param(0.4343, "pJ", "interconnect energy per bit per hop (22 nm)", 0, 1e6),
    "buffer_bits_per_ns": Param(6.005, "bit/ns", "buffer bandwidth", 1e-6, 1e9),
    "leakage_uw_per_mm2": Param(13.70, "uW/mm^2", "leakage power per mm^2 of chip", 0, 1e9),
}

#: The six calibrated constants and the V1.3 figure each one is fitted to.
CALIBRATED: dict[str, str] = {
    "input_bit_density": "ADC energy (18.27 uJ)",
    "periph_area_um2_per_line": "other-periphery area incl. interconnect (45.55 - 1.54 - 14.61 - 3.13 mm^2)",
    "periph_energy_fj_per_line": "other-periphery energy (14.31 uJ) less our buffer, interconnect and array",
    "noc_energy_pj_per_bit_hop": "interconnect energy (8.94 uJ)",
    "buffer_bits_per_ns": "buffer latency (1.00 ms)",
    "leakage_uw_per_mm2": "leakage power (628.8 uW)",
}

#: The hardware knobs a co-design search varies, with their usual ranges.
KNOBS: dict[str, tuple[int, ...]] = {
    "subarray_rows": (64, 128, 256),
    "adc_bits": (3, 4, 5, 6),
    "cell_bits": (1, 2),
}

# NeuroSim's multilevel sense-amp ADC power a*(L-1) + b/R_col at two nodes (a in uW, b in W*ohm)
_ADC_NODES_NM = (22.0, 32.0)
_ADC_A_UW = (1.7, 3.0875)
_ADC_B = (0.0631, 0.0649)
# ISAAC's SAR ADC areas at 32 nm (bits -> um^2), interpolated geometrically in bits
_ADC_AREA_BITS = np.array([4.0, 6.0, 8.0])
_ADC_AREA_UM2 = np.log(np.array([361.0, 627.0, 1200.0]))


#: Configurations per chunk in :func:`estimate`.
_CHUNK = 2048
#: Most threads :func:`estimate` uses.
_MAX_THREADS = 8


def default_params() -> dict[str, Any]:
    return {k: p.default for k, p in PARAMS.items()}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


def check_param(key: str, value: Any) -> Any:
    """``value`` checked against :data:`PARAMS` (scalar or array); a CostModelError names the
    parameter, the bad value and what is allowed."""
    p = PARAMS.get(key)
    if p is None:
        raise CostModelError(f"imc: unknown parameter {key!r} (known: {', '.join(PARAMS)})")
    if p.choices:
        if value not in p.choices:
            raise CostModelError(f"imc: {key} must be one of {', '.join(p.choices)}, got {_fmt(value)}")
        return value
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CostModelError(f"imc: {key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or arr.ndim > 1:
        raise CostModelError(f"imc: {key} must be a number or a 1-D array, got {value!r}")
    bad = ~np.isfinite(arr)
    if p.low is not None:
        bad |= arr < p.low
    if p.high is not None:
        bad |= arr > p.high
    if p.integer:
        bad |= arr != np.round(arr)
    if p.power_of_two:
        bad |= (arr <= 0) | (np.log2(np.maximum(arr, 1e-300)) % 1 != 0)
    if np.any(bad):
        v = arr.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
        what = "an integer " if p.integer else "a number "
        rule = f"{what}in [{_fmt(p.low)}, {_fmt(p.high)}]" + (", a power of two" if p.power_of_two else "")
        raise CostModelError(f"imc: {key} must be {rule}, got {_fmt(float(v))}")
    return arr if arr.ndim == 1 else value


def _col(x: Any, n: int) -> np.ndarray:
    """A parameter as an ``(n, 1)`` column (scalars broadcast)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        return np.full((n, 1), float(a))
    if a.shape != (n,):
        raise CostModelError(f"imc: a parameter array has shape {a.shape}, expected ({n},) (one value per network)")
    return a[:, None]


def _pow2ceil(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(np.maximum(x, 1.0))))


def _adc_area_um2(bits: np.ndarray, tech: np.ndarray) -> np.ndarray:
    slope_lo = (_ADC_AREA_UM2[1] - _ADC_AREA_UM2[0]) / 2
    slope_hi = (_ADC_AREA_UM2[2] - _ADC_AREA_UM2[1]) / 2
    log_a = np.interp(bits, _ADC_AREA_BITS, _ADC_AREA_UM2)
    log_a = np.where(bits < 4, _ADC_AREA_UM2[0] + (bits - 4) * slope_lo, log_a)
    log_a = np.where(bits > 8, _ADC_AREA_UM2[2] + (bits - 8) * slope_hi, log_a)
    return np.exp(log_a) * (tech / 32.0) ** 2


def _adc_coeffs(tech: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NeuroSim's a (uW per level) and b at ``tech``: linear through its 22 and 32 nm values."""
    f = (tech - _ADC_NODES_NM[0]) / (_ADC_NODES_NM[1] - _ADC_NODES_NM[0])
    a = _ADC_A_UW[0] + f * (_ADC_A_UW[1] - _ADC_A_UW[0])
    b = _ADC_B[0] + f * (_ADC_B[1] - _ADC_B[0])
    return np.maximum(a, 0.05), np.maximum(b, 0.001)


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults updated with ``params``, every value checked (:func:`check_param`)."""
    out = default_params()
    for k, v in params.items():
        out[k] = check_param(k, v)
    return out


def estimate(net: LayerArrays, params: Mapping[str, Any] | None = None, *, per_layer: bool = False) -> dict[str, Any]:
    """Area, energy and latency of ``net.n`` configurations: row ``i`` of ``net`` on the hardware of
    entry ``i`` of every array in ``params`` (scalars apply to all). Returns ``(n,)`` arrays keyed
    as in ``docs/accelerator.md`` (``area_mm2``, ``latency_ms``, ``energy_mj``, their breakdowns,
    ``tiles``...); with ``per_layer`` also ``(n, L)`` arrays ``layer_*`` (padding layers are 0)."""
    p = resolve(params or {})
    n = net.n
    if n <= _CHUNK:
        return _estimate(net, p, per_layer)
    # chunks whose arrays stay in the CPU caches, spread over threads (numpy releases the GIL)
    chunks = [slice(lo, min(n, lo + _CHUNK)) for lo in range(0, n, _CHUNK)]

    def run(rows: slice) -> dict[str, Any]:
        sub = {k: (v[rows] if isinstance(v, np.ndarray) and v.ndim == 1 else v) for k, v in p.items()}
        return _estimate(net.take(rows), sub, per_layer)

    workers = min(len(chunks), os.cpu_count() or 1, _MAX_THREADS)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(run, chunks))
    else:
        parts = [run(rows) for rows in chunks]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _estimate(net: LayerArrays, p: Mapping[str, Any], per_layer: bool) -> dict[str, Any]:
    """:func:`estimate` of one chunk, parameters already checked."""
    n = net.n
    V = net.valid
    Vf = V.astype(np.float64)

    def col(key: str) -> np.ndarray:
        return _col(p[key], n)

    r, c = col("subarray_rows"), col("subarray_cols")
    wb, cb, ab = col("weight_bits"), col("cell_bits"), col("activation_bits")
    adc_bits, nmux = col("adc_bits"), col("columns_per_adc")
    if np.any(cb > wb):
        raise CostModelError("imc: cell_bits must not exceed weight_bits")
    if np.any(nmux > c):
        raise CostModelError("imc: columns_per_adc must not exceed subarray_cols")
    tech, clock = col("tech_nm"), col("clock_ns")
    cps = np.ceil(wb / cb)  # columns per weight
    cin, k, ifm, nvec = net.cin, net.kernel, net.ifm, net.nvec
    k2 = k * k
    R = np.where(V, k2 * cin, 0.0)
    C = np.where(V, net.cout * cps, 0.0)

    # ------------------------------------------------------------------ mapping (NeuroSim's floor plan)
    # the most common k^2 (NeuroSim: ties go to the value met first, in layer order)
    k2i = np.where(V, k2, 0).astype(np.int64)
    values = np.flatnonzero(np.bincount(k2i[V]))
    L = k2.shape[1]
    score = np.empty((n, len(values)))
    for j, v in enumerate(values):
        hit = k2i == v
        score[:, j] = hit.sum(axis=1) * (L + 1) - np.where(hit.any(axis=1), hit.argmax(axis=1), L)
    num_pe = values[np.argmax(score, axis=1)].astype(np.float64)[:, None]
    novel = V & (k2 == num_pe) & (cin >= r) & (C >= c)
    conv = V & ~novel
    any_nm, any_cm = novel.any(axis=1, keepdims=True), conv.any(axis=1, keepdims=True)
    cin_nm = np.where(novel, cin, 0.0)
    C_nm = np.where(novel, C, 0.0)
    R_cm = np.where(conv, R, 0.0)
    C_cm = np.where(conv, C, 0.0)

    def search(
        start: np.ndarray, stop: np.ndarray, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """NeuroSim's size search: sizes ``start, start/2, ...`` while ``> stop``; the first size with
        the highest utilization ``sum(rows * cols) / (tiles * size^2)`` wins. Returns the size, its
        utilization and its tile count (``start``, 0 and its tiles when no size is tried)."""
        weights = (rows * cols).sum(axis=1)
        size, best = start[:, 0].copy(), np.zeros(n)
        tiles_best = (np.ceil(rows / start) * np.ceil(cols / start)).sum(axis=1)
        cand = start[:, 0].copy()
        idx = np.flatnonzero(cand > stop[:, 0])
        while idx.size:
            inv = 1.0 / cand[idx, None]
            tiles = (np.ceil(rows[idx] * inv) * np.ceil(cols[idx] * inv)).sum(axis=1)
            util = weights[idx] / np.maximum(tiles, 1) / cand[idx] ** 2
            pick = util > best[idx]
            sel = idx[pick]
            best[sel], size[sel], tiles_best[sel] = util[pick], cand[sel], tiles[pick]
            cand[idx] /= 2
            idx = idx[cand[idx] > stop[idx, 0]]
        return size[:, None], best[:, None], tiles_best[:, None]

    # novel mapping: PE size pe (tiles of num_pe PEs of pe x pe cells)
    max_pe = np.max(np.where(novel, _pow2ceil(C), 0.0), axis=1, keepdims=True)
    pe_nm, _, _ = search(np.maximum(max_pe, 2 * r), 2 * r, cin_nm, C_nm)
    # conventional mapping: tile size t, then PE size pe_cm
    max_t = np.max(np.where(conv, _pow2ceil(C), 0.0), axis=1, keepdims=True)
    t, best, tiles_cm = search(np.maximum(max_t, 4 * r), 4 * r, R_cm, C_cm)
    fits_t = conv & ((R <= t) | (C <= t))
    R1, C1 = np.maximum(R_cm, 1), np.maximum(C_cm, 1)

    def pe_dup(pe: np.ndarray, rows: slice | np.ndarray = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        inv = 1.0 / pe
        n_pe = np.ceil(t[rows] * inv)
        dr = np.maximum(1.0, np.floor(n_pe / np.ceil(R1[rows] * inv)))
        dc = np.maximum(1.0, np.floor(n_pe / np.ceil(C1[rows] * inv)))
        f = fits_t[rows]
        return np.where(f, dr, 1.0), np.where(f, dc, 1.0)

    pe_cm = t / 2
    cand = (t / 2)[:, 0]
    idx = np.flatnonzero(cand > 2 * r[:, 0])
    w_rc = R_cm * C_cm
    while idx.size:
        dr, dc = pe_dup(cand[idx, None], idx)
        util = (dr * dc * w_rc[idx]).sum(axis=1) / np.maximum(tiles_cm[idx, 0], 1) / t[idx, 0] ** 2
        pick = util > best[idx, 0]
        sel = idx[pick]
        best[sel, 0], pe_cm[sel, 0] = util[pick], cand[sel]
        cand[idx] /= 2
        idx = idx[cand[idx] > 2 * r[idx, 0]]
    pe_dr, pe_dc = pe_dup(pe_cm)

    # subarray duplication inside a PE
    rows_l = np.where(novel, cin, R)  # rows of the matrix one PE holds
    pe_l = np.where(novel, pe_nm, pe_cm)
    fits = (rows_l <= pe_l) | (C <= pe_l)
    sa_dr = np.where(fits, np.maximum(1.0, np.floor(np.ceil(pe_l / r) / np.ceil(np.maximum(rows_l, 1) / r))), 1.0)
    sa_dc = np.where(fits, np.maximum(1.0, np.floor(np.ceil(pe_l / c) / np.ceil(np.maximum(C, 1) / c))), 1.0)
    dup = np.where(V, pe_dr * pe_dc * sa_dr * sa_dc, 1.0)

    tiles_l = np.where(
        novel, np.ceil(cin / pe_nm) * np.ceil(C / pe_nm), np.where(conv, np.ceil(R / t) * np.ceil(C / t), 0.0)
    )
    speedup = dup
    if p["mode"] == "pipeline":
        first_ifm = ifm[:, :1]
        small = np.where(V & (k != 1), ifm, np.inf).min(axis=1, keepdims=True)
        small = np.where(np.isfinite(small), small, first_ifm)
        degree = np.minimum(col("pipeline_speedup_degree"), np.floor(first_ifm / small))
        bound = np.ceil(first_ifm / np.maximum(degree, 1))
        pipe = np.ceil((ifm / bound) ** 2)
        extra = np.where(V, np.ceil(pipe / dup), 1.0)
        tiles_l = tiles_l * extra
        speedup = dup * np.maximum(extra, 1.0)

    subs_per_tile = np.where(novel, num_pe * (pe_nm / r) * (pe_nm / c), (t / r) * (t / c))
    pes_per_tile = np.where(novel, num_pe, (t / pe_cm) ** 2)
    row_blocks = np.where(novel, num_pe * np.ceil(cin / r), np.ceil(R / r)) * Vf
    col_blocks = np.ceil(C / c) * Vf
    rows_per_block = np.where(
        V, np.where(novel, cin, R) / np.maximum(np.where(novel, np.ceil(cin / r), np.ceil(R / r)), 1), 0.0
    )
    tile_cells = np.where(novel, num_pe * pe_nm**2, t**2)
    utilization = np.where(V, speedup * np.where(novel, cin * num_pe, R) * C / np.maximum(tiles_l * tile_cells, 1), 0.0)

    tiles = tiles_l.sum(axis=1)
    subarrays = (tiles_l * subs_per_tile).sum(axis=1)
    pes = (tiles_l * pes_per_tile).sum(axis=1)

    # ------------------------------------------------------------------ area (um^2 unless noted)
    F_um = tech[:, 0] * 1e-3
    s32 = (tech[:, 0] / 32.0) ** 2
    s22 = (tech[:, 0] / 22.0) ** 2
    lanes = np.ceil(c / nmux)[:, 0]
    n_adc = subarrays * lanes
    area_array = subarrays * r[:, 0] * c[:, 0] * p_arr(p, "cell_area_f2", n) * F_um**2
    area_adc = n_adc * _adc_area_um2(adc_bits[:, 0], tech[:, 0])
    tree_rows = np.where(novel, num_pe * pe_nm / r, t / r)
    tree_cols = np.where(novel, pe_nm / c, t / c)
    tree_adders = (tiles_l * (tree_rows - 1) * tree_cols).sum(axis=1) * lanes
    area_accum = (n_adc + tree_adders) * p_arr(p, "shift_add_area_um2", n) * s32
    area_periph = subarrays * (r[:, 0] + c[:, 0]) * p_arr(p, "periph_area_um2_per_line", n) * s22
    in_bits = net.in_elems * ab * Vf
    out_bits = net.out_elems * ab * Vf
    if p["mode"] == "pipeline":
        buffer_bits = in_bits.sum(axis=1) / 2
    else:
        buffer_bits = in_bits.max(axis=1)
    area_buffer = buffer_bits / (64 * 1024 * 8) * p_arr(p, "buffer_area_mm2_per_64kb", n) * s32 * 1e6
    area_ic = np.ceil(tiles / 4) * p_arr(p, "router_area_mm2", n) * s32 * 1e6
    area_other = area_periph + area_buffer + area_ic
    area_total = area_array + area_adc + area_accum + area_other

    # ------------------------------------------------------------------ energy (pJ)
    conversions = nvec * ab * row_blocks * C
    g_on = 1.0 / col("cell_r_on_ohm")
    g_mean = 0.5 * (g_on + g_on / col("cell_on_off_ratio"))
    a_uw, b = _adc_coeffs(tech)
    levels = np.exp2(adc_bits)
    g_col = rows_per_block * col("input_bit_density") * g_mean
    e_conv = (a_uw * 1e-6 * (levels - 1) + b * g_col) * col("adc_time_ns") * 1e3  # W * ns -> pJ
    fixed = col("adc_energy_pj")
    e_conv = np.where(fixed > 0, fixed, e_conv)
    e_adc = (conversions * e_conv).sum(axis=1)
    pitch_um = np.sqrt(col("cell_area_f2")) * tech * 1e-3
    c_bl_ff = rows_per_block * pitch_um * col("wire_cap_ff_per_um")
    e_array = (conversions * c_bl_ff * col("read_voltage_v") ** 2 * 1e-3).sum(axis=1)
    adds = conversions + nvec * ab * np.maximum(row_blocks - 1, 0) * C + nvec * (cps - 1) * net.cout * Vf
    e_accum = adds.sum(axis=1) * p_arr(p, "shift_add_energy_pj", n) * tech[:, 0] / 32.0
    traffic = in_bits + out_bits
    bits_total = traffic.sum(axis=1)
    e_buffer = bits_total * p_arr(p, "buffer_energy_pj_per_bit", n) * tech[:, 0] / 32.0
    hops = np.maximum(1.0, np.sqrt(tiles) / 2)
    e_ic = bits_total * hops * p_arr(p, "noc_energy_pj_per_bit_hop", n) * tech[:, 0] / 22.0
    lines = (nvec * ab * (R * col_blocks + C * row_blocks)).sum(axis=1)
    e_periph = lines * p_arr(p, "periph_energy_fj_per_line", n) * 1e-3 * tech[:, 0] / 22.0
    e_other = e_periph + e_buffer + e_ic
    e_dyn = e_adc + e_array + e_accum + e_other

    # ------------------------------------------------------------------ latency (ns)
    per_vec = nvec / speedup * Vf
    t_compute = per_vec * ab * nmux * clock
    t_accum = per_vec * (np.ceil(np.log2(np.maximum(row_blocks, 1))) + 1) * clock
    t_buffer = traffic / col("buffer_bits_per_ns")
    w = col("noc_channel_bits")
    h = np.ceil(hops)[:, None]
    t_ic = ((traffic + w) / w + h + 4 * (h + 1) + 3) / col("noc_clock_ghz") * Vf
    t_layer = t_compute + t_accum + t_buffer + t_ic
    n_layers = Vf.sum(axis=1)
    if p["mode"] == "pipeline":
        period = t_layer.max(axis=1)
        latency = period * n_layers
    else:
        latency = t_layer.sum(axis=1)
        period = latency

    leak_mw = p_arr(p, "leakage_uw_per_mm2", n) * area_total * 1e-6 * 1e-3
    macs = (net.macs * Vf).sum(axis=1)
    e_leak_mj = leak_mw * latency * 1e-9  # mW * ns = 1e-12 J
    e_dyn_mj = e_dyn * 1e-9
    out: dict[str, Any] = {
        "area_mm2": area_total * 1e-6,
        "area_array_mm2": area_array * 1e-6,
        "area_adc_mm2": area_adc * 1e-6,
        "area_accumulation_mm2": area_accum * 1e-6,
        "area_other_mm2": area_other * 1e-6,
        "area_periphery_mm2": area_periph * 1e-6,
        "area_buffer_mm2": area_buffer * 1e-6,
        "area_interconnect_mm2": area_ic * 1e-6,
        "energy_mj": e_dyn_mj,
        "energy_adc_mj": e_adc * 1e-9,
        "energy_array_mj": e_array * 1e-9,
        "energy_accumulation_mj": e_accum * 1e-9,
        "energy_other_mj": e_other * 1e-9,
        "energy_periphery_mj": e_periph * 1e-9,
        "energy_buffer_mj": e_buffer * 1e-9,
        "energy_interconnect_mj": e_ic * 1e-9,
        "energy_leakage_mj": e_leak_mj,
        "leakage_mw": leak_mw,
        "latency_ms": latency * 1e-6,
        "latency_adc_ms": t_compute.sum(axis=1) * 1e-6,
        "latency_accumulation_ms": t_accum.sum(axis=1) * 1e-6,
        "latency_buffer_ms": t_buffer.sum(axis=1) * 1e-6,
        "latency_interconnect_ms": t_ic.sum(axis=1) * 1e-6,
        "period_ms": period * 1e-6,
        "fps": 1e9 / period,
        "tops": 2 * macs / period * 1e-3,
        "tops_per_w": 2 * macs / np.maximum(e_dyn + e_leak_mj * 1e9, 1e-30),  # ops per pJ = TOPS/W
        "tiles": tiles,
        "pes": pes,
        "subarrays": subarrays,
        "adcs": n_adc,
        "num_pe_novel": num_pe[:, 0],
        "pe_size_novel": np.where(any_nm[:, 0], pe_nm[:, 0], 0.0),
        "tile_size_conventional": np.where(any_cm[:, 0], t[:, 0], 0.0),
        "pe_size_conventional": np.where(any_cm[:, 0], pe_cm[:, 0], 0.0),
        "utilization": np.where(
            tiles > 0,
            (np.where(novel, cin * num_pe, R) * C).sum(axis=1) / np.maximum((tiles_l * tile_cells).sum(axis=1), 1),
            0.0,
        ),
    }
    if per_layer:
        out.update(
            layer_novel=novel,
            layer_tiles=tiles_l,
            layer_speedup=np.where(V, speedup, 0.0),
            layer_utilization=utilization,
            layer_crossbars=np.where(V, dup * row_blocks * col_blocks, 0.0),
            layer_vectors=np.where(V, nvec, 0.0),
            layer_latency_ms=t_layer * 1e-6,
            layer_energy_mj=(conversions * e_conv + conversions * c_bl_ff * col("read_voltage_v") ** 2 * 1e-3) * 1e-9,
        )
    return out


def p_arr(p: Mapping[str, Any], key: str, n: int) -> np.ndarray:
    """A parameter as an ``(n,)`` array."""
    return _col(p[key], n)[:, 0]


def knob_grid(**ranges: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """Every combination of the given knob values (default: :data:`KNOBS`) as equal-length arrays,
    e.g. ``knob_grid()`` gives 3 x 4 x 2 = 24 hardware configurations."""
    ranges = ranges or dict(KNOBS)
    for key, vals in ranges.items():
        check_param(key, np.asarray(vals))
    grids = np.meshgrid(*[np.asarray(v) for v in ranges.values()], indexing="ij")
    return {k: g.reshape(-1) for k, g in zip(ranges, grids)}


def estimate_grid(
    net: LayerArrays, knobs: Mapping[str, np.ndarray], params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every network of ``net`` on every hardware configuration of ``knobs`` (equal-length arrays,
    e.g. :func:`knob_grid`): ``(net.n, m)`` arrays, row = network, column = configuration."""
    m = len(next(iter(knobs.values()))) if knobs else 1
    rows = net.take(np.repeat(np.arange(net.n), m))
    hw = {k: np.tile(np.asarray(v), net.n) for k, v in knobs.items()}
    if "subarray_rows" in hw and "subarray_cols" not in hw and "subarray_cols" not in (params or {}):
        hw["subarray_cols"] = hw["subarray_rows"]  # square subarrays unless told otherwise
    res = estimate(rows, {**(params or {}), **hw})
    return {k: v.reshape(net.n, m) for k, v in res.items() if isinstance(v, np.ndarray) and v.ndim == 1}


def meets_limits(
    result: Mapping[str, np.ndarray],
    knobs: Mapping[str, Any] | None = None,
    *,
    max_area_mm2: float | None = None,
    max_latency_ms: float | None = None,
    max_energy_mj: float | None = None,
    min_adc_bits: int | None = 5,
) -> np.ndarray:
    """Which configurations of ``result`` (from :func:`estimate` or :func:`estimate_grid`) meet
    the limits. ``min_adc_bits`` (default 5, V1.3's ADC) bounds the ADC resolution from below
    because the model does not know the accuracy lost to coarse ADCs; it reads ``knobs["adc_bits"]``
    (arrays of :func:`knob_grid`, one per configuration) and is ignored without them."""
    ok = np.ones(np.shape(result["area_mm2"]), dtype=bool)
    for key, limit in (("area_mm2", max_area_mm2), ("latency_ms", max_latency_ms), ("energy_mj", max_energy_mj)):
        if limit is not None:
            if not limit > 0:
                raise CostModelError(f"imc: the limit on {key} must be positive, got {limit}")
            ok &= np.asarray(result[key]) <= limit
    if min_adc_bits is not None and knobs is not None and "adc_bits" in knobs:
        ok &= np.broadcast_to(np.asarray(knobs["adc_bits"]) >= min_adc_bits, ok.shape)
    return ok


def ops_per_image(net: LayerArrays) -> np.ndarray:
    """NeuroSim's operation count ``2 * MACs`` per network."""
    return 2 * (net.macs * net.valid).sum(axis=1)


__all__ = [
    "CALIBRATED",
    "KNOBS",
    "PARAMS",
    "Param",
    "check_param",
    "default_params",
    "estimate",
    "estimate_grid",
    "knob_grid",
    "meets_limits",
]
