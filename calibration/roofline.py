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

``none`` is the plain per-layer roofline; ``auto`` (default) fits every variant and keeps the one
with the smallest training error (``conv_algorithm_``). On a single core of an AVX-512 machine the
blocked padding alone changes a layer's time by up to 2x (8 output channels cost as much as 16), so
this is the difference between a roofline that ranks models and one that predicts them.

Fitting
-------
``scipy.optimize.least_squares`` (trust-region reflective, with bounds) on the *relative* error
``pred / y - 1``, in stages: a non-negative linear fit (``nnls``, compute and memory terms added)
gives the start, then the smooth-max model is fitted from there. Rates and bandwidths are fitted as
logarithms, with a weak pull (``regularization``) towards the start so that kinds the data hardly
constrain stay sensible. Kinds absent from the training data get the geometric mean of the fitted
compute rates (or bandwidths). With ``shared_bandwidth=True`` one bandwidth serves every kind (the
textbook roofline); by default each kind has its own effective bandwidth, because element-wise
operators (BatchNorm, the gather/concat of skips, pooling) reach very different fractions of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares, nnls

from calibration.base import CostModel
from calibration.errors import CostModelError
from calibration.features import KIND_INDEX, KINDS, LayerBatch, LayerRecord, layer_batch

#: Operator kinds of the roofline: the layer kinds plus the runtime's implied operators.
ROOF_KINDS: tuple[str, ...] = KINDS + ("conv_im2col", "im2col", "reorder")
ROOF_INDEX = {k: i for i, k in enumerate(ROOF_KINDS)}
ROOF_COMPUTE: tuple[str, ...] = ("conv", "pointwise", "depthwise", "linear", "conv_im2col")
CONV_ALGORITHMS: tuple[str, ...] = ("none", "im2col", "nchwc8", "nchwc16")
_ALIGN = 4  # channel multiple onnxruntime needs to reorder a tensor into NCHWc


@dataclass(frozen=True)
class _Ops:
    n: int
    sample: np.ndarray
    kind: np.ndarray
    gflop: np.ndarray
    gbyte: np.ndarray
    ops: np.ndarray

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
    ) -> None:
        self.conv_algorithm = conv_algorithm
        self.smoothness = smoothness
        self.shared_bandwidth = shared_bandwidth
        self.regularization = regularization
        self.max_nfev = max_nfev

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
        algos = CONV_ALGORITHMS if self.conv_algorithm == "auto" else (self.conv_algorithm,)
        best: tuple[float, str, tuple[np.ndarray, np.ndarray, float, float]] | None = None
        for algo in algos:
            params, err = self._fit_one(expand_ops(b, algo), y)
            if best is None or err < best[0] - 1e-9:
                best = (err, algo, params)
        assert best is not None
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
        mem_cols = [nbytes.sum(1, keepdims=True)] if self.shared_bandwidth else [nbytes[:, mk]]
        # stage 1: additive non-negative fit on relative error gives the starting point
        a = np.hstack([flops[:, ck], *mem_cols, ops[:, None], np.ones((o.n, 1))]) / y[:, None]
        scale = np.maximum(a.max(0), 1e-300)
        coef, _ = nnls(a / scale, np.ones(o.n), maxiter=50 * a.shape[1])
        coef = coef / scale
        nc, nm = len(ck), (1 if self.shared_bandwidth else len(mk))

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
                m[mk] = np.exp(theta[nc:nz])
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
        )
        r, m, ov, const = unpack(sol.x)
        # kinds the data did not see: geometric means of the fitted values
        r[r == 0] = float(np.exp(np.mean(np.log(r[ck]))))
        m[m == 0] = float(np.exp(np.mean(np.log(m[m > 0]))))
        err = float(100 * np.sqrt(np.mean(sol.fun[: o.n] ** 2)))
        return (r, m, ov, const), err

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        o = expand_ops(layer_batch(tables), self.conv_algorithm_)
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
