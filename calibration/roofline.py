"""Analytical roofline latency model, aware of how the runtime lays out convolutions.

For every operator ``l`` of kind ``k``::

    compute_ms(l) = FLOPs(l) / R_k          (FLOPs = 2 * MACs; R_k: effective GFLOP/s of kind k)
    memory_ms(l)  = bytes(l) / B_k          (bytes = weights + input + output; B_k: effective GB/s)
    op_ms(l)      = smoothmax(compute_ms, memory_ms) = (compute^p + memory^p)^(1/p)

    latency_ms = sum_l op_ms(l) + overhead_ms * (number of operators) + constant_ms

The ``p``-norm (``smoothness = p``) is a smooth, scale-free maximum (the exact max as
``p -> inf``), so the fit is a smooth bounded least-squares problem.

Convolution algorithms (``conv_algorithm``)
-------------------------------------------
A roofline with one rate per layer kind misses what the runtime actually executes. onnxruntime's
CPU kernels (MLAS), for example, run a convolution in one of two ways, and which one depends on
its shape:

- **blocked** (``nchwc8``/``nchwc16``): on x86 the graph optimizer rewrites a convolution whose
  input and output channel counts are multiples of 4 into the NCHWc layout, channels padded up to
  the SIMD block (16 with AVX-512, 8 with AVX2): the work is that of the *padded* channel counts,
  and two extra memory-bound operators reorder the tensors into and out of the blocked layout;
- **im2col + GEMM** (every other k x k convolution; all of them with ``im2col``, e.g. on ARM): the
  input is unfolded into a ``C_in*k*k x H*W`` matrix (an extra memory-bound operator moving
  ``2 * 4 * C_in*k*k*H_out*W_out`` bytes) before a GEMM on the real channel counts, at its own rate
  (kind ``conv_im2col``).

``none`` is the plain per-layer roofline.

Simulated graph (``ort_nchwc16``, ``ort_nchwc8``)
-------------------------------------------------
For dense-family CNNs (the ``flash`` spaces) the per-layer view above still misses most of what
onnxruntime runs: which BatchNorm-ReLU pairs are folded into the convolution before them (free),
which become standalone NCHW passes (after every skip concatenation) or NCHWc 1x1 depthwise
convolutions, the growing ``Concat`` of earlier outputs that every skip ``Gather`` reads from, and
exactly one ``ReorderOutput`` per blocked tensor that an NCHW operator reads.
:func:`ort_graph_ops` replays the graph optimizer's decisions layer by layer (the rules are listed
there) and yields the operators of the optimized graph. Two further physical choices, made on
development data (models not in the benchmark's test set):

- the border columns of a 3x3 convolution (output columns 0 and W-1, which touch the padding) run
  through the kernels' slower padded path: convolution work is ``FLOPs * (1 + edge_cost * 2/W)``
  (``edge_cost`` 2 by default: 1.125x on 32x32 maps, 1.5x on 8x8 maps), so ``gflops["conv"]`` is
  the interior rate;
- the purely memory-bound kinds (:data:`ROOF_MEMORY`) share one fitted bandwidth: with 25
  measurements, separate ones trade off against each other and some end up switched off.

``auto`` (default) fits every variant that applies and keeps the one with the smallest training
error (``conv_algorithm_``), except that for dense CNNs it keeps the better simulated graph unless
a per-layer expansion fits the training data at least twice as well. On 84 development models
measured on this 2-core AVX-512 machine (20 random splits, 25 to fit and 59 to predict) the
simulated graph predicts 96% within +-10% (RMSPE 5.0%) where the best per-layer expansion
(``nchwc8``) predicts 86% (RMSPE 6.9%). On a single core of an AVX-512 machine the
blocked padding alone changes a layer's time by up to 2x (8 output channels cost as much as 16), so
this is the difference between a roofline that ranks models and one that predicts them.

Fitting
-------
``scipy.optimize.least_squares`` (trust-region reflective, with bounds) on the *relative* error
``pred / y - 1`` (``loss``/``loss_scale``: least_squares' robust losses, e.g. ``soft_l1``, for
measurements with occasional slow outliers; plain least squares by default), in stages: a
non-negative linear fit (``nnls``, compute and memory terms added)
gives the start, then the smooth-max model is fitted from there. Rates and bandwidths are fitted as
logarithms, with a weak pull (``regularization``) towards the start so that kinds the data hardly
constrain stay sensible. Kinds absent from the training data get the geometric mean of the fitted
compute rates (or bandwidths). With ``shared_bandwidth=True`` one bandwidth serves every kind (the
textbook roofline); by default each kind has its own effective bandwidth, because element-wise
operators (BatchNorm, the gather/concat of skips, pooling) reach very different fractions of it
(except with the simulated graph, whose memory-bound kinds share one, see above).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from nnflash.calibration.base import CostModel, register_cost_model
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import KIND_INDEX, KINDS, LayerBatch, LayerRecord, layer_batch
from nnflash.calibration.fitting import relative_nnls

#: Operator kinds of the roofline: the layer kinds plus the runtime's implied operators.
ROOF_KINDS: tuple[str, ...] = KINDS + ("conv_im2col", "im2col", "reorder")
ROOF_INDEX = {k: i for i, k in enumerate(ROOF_KINDS)}
ROOF_COMPUTE: tuple[str, ...] = ("conv", "pointwise", "depthwise", "linear", "conv_im2col")
#: Kinds that only move data (BatchNorm/ReLU passes, skip gathers and concatenations, im2col,
#: layout reorders, pooling): with the graph simulation they share one fitted bandwidth.
ROOF_MEMORY: tuple[str, ...] = ("bn", "gather", "pool", "add", "im2col", "reorder")
ORT_ALGORITHMS: tuple[str, ...] = ("ort_nchwc8", "ort_nchwc16")
CONV_ALGORITHMS: tuple[str, ...] = ("none", "im2col", "nchwc8", "nchwc16") + ORT_ALGORITHMS
_GRAPH_MARGIN = 2.0  # auto keeps the simulated graph unless another fits this many times better
_ALIGN = 4  # channel multiple onnxruntime needs to reorder a tensor into NCHWc


@dataclass(frozen=True)
class _Ops:
    n: int
    sample: np.ndarray
    kind: np.ndarray
    gflop: np.ndarray
    gbyte: np.ndarray
    ops: np.ndarray
    #: Fit one bandwidth for all the purely memory-bound kinds (:data:`ROOF_MEMORY`).
    tied_memory: bool = False

    def per_sample(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.sample, weights=v, minlength=self.n)


def _pad(c: np.ndarray, block: int) -> np.ndarray:
    return np.ceil(c / block) * block


def expand_ops(b: LayerBatch, conv_algorithm: str) -> _Ops:
    """The operators the runtime executes for the layers in ``b`` under ``conv_algorithm``."""
    kind = b.kind.copy()
    flops = 2.0 * b.macs
    nbytes = b.bytes.copy()
    extra: list[tuple[np.ndarray, int, np.ndarray]] = []  # (layer mask, kind, bytes)
    is_conv = np.isin(b.kind, [KIND_INDEX["conv"], KIND_INDEX["pointwise"], KIND_INDEX["depthwise"]])
    spatial = is_conv & (b.kernel > 1) & (b.kind != KIND_INDEX["depthwise"])
    if conv_algorithm == "im2col":
        extra.append((spatial, ROOF_INDEX["im2col"], 2.0 * 4 * b.in_ch * b.kernel**2 * b.hw_out))
        kind = np.where(spatial, ROOF_INDEX["conv_im2col"], kind)
    elif conv_algorithm in ("nchwc8", "nchwc16"):
        block = 8 if conv_algorithm == "nchwc8" else 16
        ok_in = (b.in_ch % _ALIGN == 0) | (b.in_ch < _ALIGN)
        blocked = is_conv & ok_in & (b.out_ch % _ALIGN == 0)
        cin_p = np.where(b.in_ch < _ALIGN, b.in_ch, _pad(b.in_ch, block))
        cout_p = _pad(b.out_ch, block)
        dw = b.kind == KIND_INDEX["depthwise"]
        scale = np.where(dw, cout_p / np.maximum(b.out_ch, 1), cin_p * cout_p / np.maximum(b.in_ch * b.out_ch, 1))
        flops = np.where(blocked, flops * scale, flops)
        extra.append(
            (blocked, ROOF_INDEX["reorder"], 4.0 * (b.hw_in * (b.in_ch + cin_p) + b.hw_out * (b.out_ch + cout_p)))
        )
        im2col = spatial & ~blocked
        extra.append((im2col, ROOF_INDEX["im2col"], 2.0 * 4 * b.in_ch * b.kernel**2 * b.hw_out))
        kind = np.where(im2col, ROOF_INDEX["conv_im2col"], kind)
    elif conv_algorithm != "none":
        raise CostModelError(f"roofline: unknown conv_algorithm {conv_algorithm!r}")
    samples = [b.sample]
    kinds = [kind]
    gflop = [flops / 1e9]
    gbyte = [nbytes / 1e9]
    ops = [b.ops]
    for mask, k, eb in extra:
        samples.append(b.sample[mask])
        kinds.append(np.full(int(mask.sum()), k))
        gflop.append(np.zeros(int(mask.sum())))
        gbyte.append(eb[mask] / 1e9)
        ops.append(np.ones(int(mask.sum())))
    return _Ops(
        b.n,
        np.concatenate(samples),
        np.concatenate(kinds).astype(np.int64),
        np.concatenate(gflop),
        np.concatenate(gbyte),
        np.concatenate(ops),
    )


# ------------------------------------------------------------------ onnxruntime's graph, simulated

#: Roles of the layers of a dense ``regular`` cell and of its head (:attr:`LayerRecord.role`).
_DENSE_ROLES: tuple[str, ...] = ("conv", "gather", "bn")
_HEAD_ROLES: tuple[str, ...] = ("bn", "pool", "fc")


def _blocked_input(in_ch: int, block: int) -> bool:
    """Whether onnxruntime's NCHWc transformer runs a (group 1) convolution with ``in_ch`` input
    channels in the blocked layout: fewer channels than the block (read straight from NCHW) or a
    multiple of 4 (padded up to the block). Every other one stays an NCHW im2col + GEMM convolution."""
    return in_ch < block or in_ch % _ALIGN == 0


def _padi(c: int, block: int) -> int:
    return -(-c // block) * block


def _edge_scale(w_out: int, hw_out: int, edge_cost: float) -> float:
    """Work multiplier of a 3x3 convolution whose 2 border columns (of ``w_out``) run ``1 +
    edge_cost`` times slower than the interior (the padded-border path of the kernels)."""
    w = w_out if w_out > 0 else max(int(round(hw_out**0.5)), 1)
    return 1.0 + edge_cost * min(2.0 / w, 1.0)


def ort_graph_ops(table: Sequence[LayerRecord], block: int, edge_cost: float) -> list[tuple[int, float, float]] | None:
    """The operators onnxruntime (CPU, x86 NCHWc transformer with SIMD ``block``) runs for a
    dense-family CNN with 3x3 convolutions, as ``(roofline kind, GFLOP, GB)``; ``None`` when the
    table is not such a network (the caller falls back to :func:`expand_ops`).

    Simulated rules (checked against the optimized graphs of 84 ``flash`` models, onnxruntime
    1.32, AVX-512: node counts exact): a convolution is blocked when :func:`_blocked_input`; its
    output is NCHWc. A pre-activation BatchNorm-ReLU whose input is a convolution output with no
    other consumer is folded into that convolution (free); on a shared blocked output it becomes an
    NCHWc 1x1 depthwise convolution (kind ``bn``, one pass); otherwise (after a concatenation, or on
    a shared NCHW output) BatchNormalization and Relu run as two NCHW passes. A skip of layer ``i``
    is ``Concat(out[0..i-2])`` (NCHWc when every input is blocked and the width is a multiple of the
    block), ``Gather`` and ``Concat(out[i-1], gathered)`` (kind ``gather``). NCHWc tensors read by
    NCHW operators get one ``ReorderOutput`` each; a blocked convolution with at least ``block``
    input channels on an NCHW input gets a ``ReorderInput`` (kind ``reorder``). Unblocked
    convolutions are an im2col (kind ``im2col``, ``2 * 4 * 9*C_in*H_out*W_out`` bytes) plus a GEMM
    (kind ``conv_im2col``). Convolution work is scaled by :func:`_edge_scale`."""
    cells: dict[int, dict[int, dict[str, LayerRecord]]] = {}
    head: dict[str, LayerRecord] = {}
    for r in table:
        if r.section == "body" and r.cell is not None and r.index is not None and r.role in _DENSE_ROLES:
            cells.setdefault(r.cell, {}).setdefault(r.index, {})[r.role] = r
        elif r.section == "head" and r.role in _HEAD_ROLES:
            head[r.role] = r
        else:
            return None
    if not cells or set(head) != {"bn", "pool", "fc"}:
        return None
    # tensors: name -> [channels, pixels, blocked layout?, consumers]
    ten: dict[str, list[Any]] = {"img": [table[0].in_ch, table[0].hw_in, False, 0]}
    events: list[tuple[Any, ...]] = []
    prev = "img"
    for c in sorted(cells):
        outs: list[str] = []
        for i in sorted(cells[c]):
            layer = cells[c][i]
            conv = layer.get("conv")
            if conv is None or conv.kernel != 3 or conv.groups != 1 or len(outs) != i:
                return None
            w, hw = conv.out_ch, conv.hw_in
            if i == 0:
                src = prev
            elif "gather" not in layer or i < 2:
                src = outs[i - 1]
            else:
                s = layer["gather"].in_ch - w
                if i == 2:
                    pool = outs[0]
                else:
                    srcs = outs[: i - 1]
                    pool = f"p{c}.{i}"
                    ten[pool] = [w * (i - 1), hw, all(ten[t][2] for t in srcs) and w % block == 0, 0]
                    events.append(("concat", srcs, pool))
                gathered = f"g{c}.{i}"
                ten[gathered] = [s, hw, False, 0]
                events.append(("concat", [pool], gathered))  # Gather: reads and writes s channels
                src = f"x{c}.{i}"
                ten[src] = [w + s, hw, False, 0]
                events.append(("concat", [outs[i - 1], gathered], src))
            out = f"o{c}.{i}"
            ten[out] = [w, conv.hw_out, _blocked_input(conv.in_ch, block), 0]
            events.append(("conv", src, "bn" in layer, conv))
            outs.append(out)
        prev = outs[-1]
    events.append(("head", prev, True, head["fc"]))
    for ev in events:
        for t in ev[1] if ev[0] == "concat" else [ev[1]]:
            ten[t][3] += 1

    ops: list[tuple[int, float, float]] = []
    reordered: dict[str, float] = {}  # NCHWc tensor -> bytes of its ReorderOutput

    def to_nchw(t: str) -> None:
        ch, px, blk, _ = ten[t]
        if blk and t not in reordered:
            reordered[t] = 4.0 * (_padi(ch, block) + ch) * px

    gather, bn, reorder = ROOF_INDEX["gather"], ROOF_INDEX["bn"], ROOF_INDEX["reorder"]
    for ev in events:
        if ev[0] == "concat":
            _, srcs, out = ev
            if not ten[out][2]:
                for t in srcs:
                    to_nchw(t)
            else:
                to_nchw(out)
            ops.append((gather, 0.0, 8.0 * ten[out][0] * ten[out][1]))
            continue
        _, src, pre, rec = ev
        ch, px, blk, ncons = ten[src]
        x_blk = blk
        if pre:
            if src[0] == "o" and ncons == 1:
                pass  # folded into the producing convolution
            elif src[0] == "o" and blk:
                ops.append((bn, 2.0 * _padi(ch, block) * px, 8.0 * _padi(ch, block) * px))
                src = src + "'"
                ten[src] = [ch, px, True, 1]
            else:
                to_nchw(src)
                ops += [(bn, 0.0, 8.0 * ch * px), (bn, 0.0, 8.0 * ch * px)]  # BatchNormalization, Relu
                x_blk = False
        if ev[0] == "head":
            if x_blk:
                to_nchw(src)
            ops.append((ROOF_INDEX["pool"], 0.0, 4.0 * ch * px))
            ops.append((ROOF_INDEX["add"], 0.0, 0.0))  # Flatten
            ops.append((ROOF_INDEX["linear"], 2.0 * rec.macs, rec.bytes_weights + 4.0 * (rec.in_ch + rec.out_ch)))
            continue
        cin, cout, px_out = rec.in_ch, rec.out_ch, rec.hw_out
        edge = _edge_scale(rec.w_out, px_out, edge_cost)
        if _blocked_input(cin, block):
            cin_p, cout_p = (cin if cin < block else _padi(cin, block)), _padi(cout, block)
            if cin >= block and not x_blk:
                ops.append((reorder, 0.0, 4.0 * (cin + cin_p) * px))
            if cin < block and x_blk:
                reordered[src + "_"] = 4.0 * (_padi(cin, block) + cin) * px
            flops = 2.0 * 9 * cin_p * cout_p * px_out
            ops.append((ROOF_INDEX["conv"], flops * edge, 4.0 * (9 * cin_p * cout_p + cin_p * px + cout_p * px_out)))
        else:
            if x_blk:
                to_nchw(src)
            col = 9.0 * cin * px_out
            ops.append((ROOF_INDEX["im2col"], 0.0, 8.0 * col))
            flops = 2.0 * col * cout
            ops.append((ROOF_INDEX["conv_im2col"], flops * edge, 4.0 * (9 * cin * cout + col + cout * px_out)))
    ops += [(reorder, 0.0, b) for b in reordered.values()]
    return ops


def ort_ops(tables: Sequence[Sequence[LayerRecord]], block: int, edge_cost: float) -> _Ops | None:
    """:func:`ort_graph_ops` of every table as one :class:`_Ops`; ``None`` if any is not a dense CNN."""
    sample: list[int] = []
    rows: list[tuple[int, float, float]] = []
    for i, t in enumerate(tables):
        ops = ort_graph_ops(t, block, edge_cost)
        if ops is None:
            return None
        sample += [i] * len(ops)
        rows += ops
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return _Ops(
        len(tables),
        np.array(sample, dtype=np.int64),
        arr[:, 0].astype(np.int64),
        arr[:, 1] / 1e9,
        arr[:, 2] / 1e9,
        np.where(arr[:, 0] == ROOF_INDEX["im2col"], 0.0, 1.0),  # im2col is part of the Conv node
        tied_memory=True,
    )


@register_cost_model
class RooflineLatencyModel(CostModel):
    """Per-operator roofline with per-kind effective rates (see the module docstring)."""

    kind = "roofline"
    min_samples = 5

    def __init__(
        self,
        conv_algorithm: str = "auto",
        smoothness: float = 4.0,
        shared_bandwidth: bool = False,
        regularization: float = 1e-3,
        max_nfev: int = 400,
        edge_cost: float = 2.0,
        loss: str = "linear",
        loss_scale: float = 0.05,
    ) -> None:
        self.conv_algorithm = conv_algorithm
        self.smoothness = smoothness
        self.shared_bandwidth = shared_bandwidth
        self.regularization = regularization
        self.max_nfev = max_nfev
        self.edge_cost = edge_cost
        self.loss = loss
        self.loss_scale = loss_scale

    def _validate_params(self) -> None:
        if self.conv_algorithm not in CONV_ALGORITHMS + ("auto",):
            raise CostModelError(
                f"roofline: conv_algorithm must be one of auto, "
                f"{', '.join(CONV_ALGORITHMS)}; got {self.conv_algorithm!r}"
            )
        if not (isinstance(self.smoothness, (int, float)) and self.smoothness >= 1):
            raise CostModelError(f"roofline: smoothness must be a number >= 1, got {self.smoothness!r}")
        if not (isinstance(self.regularization, (int, float)) and self.regularization >= 0):
            raise CostModelError(f"roofline: regularization must be >= 0, got {self.regularization!r}")
        if self.loss not in ("linear", "soft_l1", "huber", "cauchy", "arctan"):
            raise CostModelError(
                f"roofline: loss must be one of linear, soft_l1, huber, cauchy, arctan; got {self.loss!r}"
            )
        if not (isinstance(self.loss_scale, (int, float)) and self.loss_scale > 0):
            raise CostModelError(f"roofline: loss_scale must be > 0, got {self.loss_scale!r}")
        if not (isinstance(self.edge_cost, (int, float)) and self.edge_cost >= 0):
            raise CostModelError(f"roofline: edge_cost must be >= 0, got {self.edge_cost!r}")
        if not (isinstance(self.max_nfev, int) and self.max_nfev >= 1):
            raise CostModelError(f"roofline: max_nfev must be a positive integer, got {self.max_nfev!r}")

    # ----------------------------------------------------------------- the model

    def _times(
        self, o: _Ops, ms_per_gflop: np.ndarray, ms_per_gb: np.ndarray, overhead_ms: float, constant_ms: float
    ) -> np.ndarray:
        tc = o.gflop * ms_per_gflop[o.kind]
        tm = o.gbyte * ms_per_gb[o.kind]
        p = float(self.smoothness)
        hi = np.maximum(np.maximum(tc, tm), 1e-300)
        op = hi * ((tc / hi) ** p + (tm / hi) ** p) ** (1.0 / p)
        return o.per_sample(op + overhead_ms * o.ops) + constant_ms

    def _fit(self, tables: list[list[LayerRecord]], y: np.ndarray, **kw: Any) -> None:
        b = layer_batch(tables)
        algos: tuple[str, ...] = (self.conv_algorithm,)
        graph = all(ort_graph_ops(t, 16, 0.0) is not None for t in tables)
        if self.conv_algorithm == "auto":
            algos = CONV_ALGORITHMS if graph else tuple(a for a in CONV_ALGORITHMS if a not in ORT_ALGORITHMS)
        fits = {algo: self._fit_one(self._ops(tables, b, algo), y) for algo in algos}
        best: tuple[float, str, tuple[np.ndarray, np.ndarray, float, float]] | None = None
        for algo, (params, err) in fits.items():
            if best is None or err < best[0] - 1e-9:
                best = (err, algo, params)
        assert best is not None
        if self.conv_algorithm == "auto" and graph and best[1] not in ORT_ALGORITHMS:
            # the simulated graph is what the runtime executes: keep it unless a per-layer
            # expansion explains the training data at least twice as well
            g_algo = min(ORT_ALGORITHMS, key=lambda a: fits[a][1])
            if fits[g_algo][1] <= _GRAPH_MARGIN * best[0]:
                best = (fits[g_algo][1], g_algo, fits[g_algo][0])
        err, algo, (r, m, ov, const) = best
        self.conv_algorithm_ = algo
        self.ms_per_gflop_ = r
        self.ms_per_gb_ = m
        self.overhead_ms_ = ov
        self.constant_ms_ = const
        self.train_rmspe_ = err

    def _fit_one(self, o: _Ops, y: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, float, float], float]:
        nk = len(ROOF_KINDS)
        flops = np.zeros((o.n, nk))
        nbytes = np.zeros((o.n, nk))
        np.add.at(flops, (o.sample, o.kind), o.gflop)
        np.add.at(nbytes, (o.sample, o.kind), o.gbyte)
        ops = o.per_sample(o.ops)
        ck = [ROOF_INDEX[k] for k in ROOF_COMPUTE if flops[:, ROOF_INDEX[k]].sum() > 0]
        mk = [i for i in range(nk) if nbytes[:, i].sum() > 0]
        if not ck:
            raise CostModelError("roofline: the training specs have no compute layers")
        if self.shared_bandwidth:
            groups = [mk]
        elif o.tied_memory:
            memory = [ROOF_INDEX[k] for k in ROOF_MEMORY]
            groups = [[i] for i in mk if i not in memory] + [[i for i in mk if i in memory]]
            groups = [g for g in groups if g]
        else:
            groups = [[i] for i in mk]
        mem_cols = [nbytes[:, g].sum(1, keepdims=True) for g in groups]
        # stage 1: additive non-negative fit on relative error gives the starting point
        coef = relative_nnls(np.hstack([flops[:, ck], *mem_cols, ops[:, None], np.ones((o.n, 1))]), y)
        nc, nm = len(ck), len(groups)

        def _fill(c: np.ndarray) -> np.ndarray:
            pos = c[c > 0]
            ref = float(np.exp(np.mean(np.log(pos)))) if len(pos) else 1.0
            return np.where(c > 0, c, ref * 1e-2)  # unused by the linear fit: make it cheap

        lo, hi = np.log(1e3 / 1e6), np.log(1e3 / 1e-3)  # ms per G: rates within 1e-3..1e6 G/s
        z0 = np.clip(
            np.concatenate([np.log(_fill(coef[:nc])), np.log(_fill(coef[nc : nc + nm]))]), lo + 1e-9, hi - 1e-9
        )
        lin0 = np.array([max(coef[-2], 1e-6), max(coef[-1], 1e-4)])
        nz = len(z0)
        lam = float(self.regularization)

        def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
            r = np.zeros(nk)
            r[ck] = np.exp(theta[:nc])
            m = np.zeros(nk)
            if self.shared_bandwidth:
                m[:] = np.exp(theta[nc])
            else:
                for j, g in enumerate(groups):
                    m[g] = np.exp(theta[nc + j])
            return r, m, float(theta[nz]), float(theta[nz + 1])

        def resid(theta: np.ndarray) -> np.ndarray:
            r, m, ov, const = unpack(theta)
            pred = self._times(o, r, m, ov, const)
            return np.concatenate([pred / y - 1.0, lam * (theta[:nz] - z0)])

        lower = np.concatenate([np.full(nz, lo), [0.0, 0.0]])
        upper = np.concatenate([np.full(nz, hi), [np.inf, np.inf]])
        sol = least_squares(
            resid,
            np.concatenate([z0, lin0]),
            bounds=(lower, upper),
            method="trf",
            x_scale="jac",
            max_nfev=self.max_nfev,
            loss=self.loss,
            f_scale=float(self.loss_scale),
        )
        r, m, ov, const = unpack(sol.x)
        # kinds the data did not see: geometric means of the fitted values
        r[r == 0] = float(np.exp(np.mean(np.log(r[ck]))))
        m[m == 0] = float(np.exp(np.mean(np.log(m[m > 0]))))
        err = float(100 * np.sqrt(np.mean(sol.fun[: o.n] ** 2)))
        return (r, m, ov, const), err

    def _ops(self, tables: list[list[LayerRecord]], b: LayerBatch, algo: str) -> _Ops:
        """The operators of ``tables`` under ``algo``. The ``ort_*`` algorithms simulate
        onnxruntime's graph (:func:`ort_graph_ops`) where it applies and otherwise fall back to the
        per-layer ``nchwc*`` expansion."""
        if algo not in ORT_ALGORITHMS:
            return expand_ops(b, algo)
        block = 8 if algo == "ort_nchwc8" else 16
        o = ort_ops(tables, block, float(self.edge_cost))
        return expand_ops(b, algo[4:]) if o is None else o

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        o = self._ops(tables, layer_batch(tables), self.conv_algorithm_)
        return self._times(o, self.ms_per_gflop_, self.ms_per_gb_, self.overhead_ms_, self.constant_ms_)

    # ----------------------------------------------------------------- reporting, persistence

    def report(self) -> dict[str, Any]:
        """Effective GFLOP/s per compute kind, GB/s per kind, microseconds per operator, constant
        ms, the convolution algorithm chosen, and the training RMSPE (%)."""
        self._check_fitted()
        return {
            "conv_algorithm": self.conv_algorithm_,
            "gflops": {k: 1e3 / float(self.ms_per_gflop_[ROOF_INDEX[k]]) for k in ROOF_COMPUTE},
            "gbps": {k: 1e3 / float(self.ms_per_gb_[ROOF_INDEX[k]]) for k in ROOF_KINDS},
            "overhead_us_per_op": 1e3 * float(self.overhead_ms_),
            "constant_ms": float(self.constant_ms_),
            "train_rmspe": self.train_rmspe_,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "kinds": list(ROOF_KINDS),
            "conv_algorithm": self.conv_algorithm_,
            "ms_per_gflop": [float(v) for v in self.ms_per_gflop_],
            "ms_per_gb": [float(v) for v in self.ms_per_gb_],
            "overhead_ms": float(self.overhead_ms_),
            "constant_ms": float(self.constant_ms_),
            "train_rmspe": self.train_rmspe_,
            "physical": self.report(),
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        kinds = list(state["kinds"])
        if kinds != list(ROOF_KINDS):
            raise CostModelError(
                f"roofline: saved operator kinds {kinds} differ from this version's {list(ROOF_KINDS)}"
            )
        algo = state["conv_algorithm"]
        if algo not in CONV_ALGORITHMS:
            raise CostModelError(f"roofline: unknown saved conv_algorithm {algo!r}")
        self.conv_algorithm_ = algo
        self.ms_per_gflop_ = np.array(state["ms_per_gflop"], dtype=np.float64)
        self.ms_per_gb_ = np.array(state["ms_per_gb"], dtype=np.float64)
        if self.ms_per_gflop_.shape != (len(ROOF_KINDS),) or self.ms_per_gb_.shape != (len(ROOF_KINDS),):
            raise CostModelError("roofline: saved rates have the wrong length")
        if not (np.all(self.ms_per_gflop_ > 0) and np.all(self.ms_per_gb_ > 0)):
            raise CostModelError("roofline: saved rates must be positive")
        self.overhead_ms_ = float(state["overhead_ms"])
        self.constant_ms_ = float(state["constant_ms"])
        self.train_rmspe_ = float(state["train_rmspe"])
