"""Vectorized per-cell costs of dense-family networks: what the full cost models predict, split
into one additive term per cell given the state of the tensor entering it.

Every cost the search limits is a sum over cells (plus a constant and the head), or a maximum over
them (peak memory), once each cell knows the **coupling state** of its input: the width of the
previous cell's output and, for onnxruntime's simulated graph, whether that tensor is in the
NCHWc-blocked layout. Blocking depends on the input channels of the convolution that produced it
(:func:`nnflash.calibration.roofline._blocked_input`): a cell's last convolution reads ``w + s``
channels (``s = min(tc, w*(d-2))`` long-range ones), so the state leaving a cell depends on its
width, and on its skip cap modulo 4 and whether ``w + s`` is below the SIMD block.

:class:`CellEvaluator` computes, for a batch of ``(cell config, input state)`` pairs:

- latency: the roofline's operators (the per-layer expansions of ``expand_ops``, or the simulated
  onnxruntime graph of ``ort_graph_ops``, rebuilt here layer by layer for whole arrays of cells)
  passed through the model's own smooth-max times; the linear and MACs-only models' feature sums;
- energy: the energy model's idle power x latency + energy per MAC and per byte;
- params, MACs, peak activation memory (:mod:`nnflash.search.memory`), and the cell's share of
  NN-Degree and NN-Mass.

The network's value is the sum of its cells' terms plus :attr:`CellEvaluator.constant` and the
head's term (which depends on the last cell's output state). :func:`network_costs` composes them
for full configurations; ``tests/unit/test_search_evaluator.py`` checks it against
``CostModel.predict`` to 1e-6 relative on random specs of every cost-model kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from nnflash.calibration.base import CostModel
from nnflash.calibration.features import KIND_INDEX, KINDS, LayerBatch
from nnflash.calibration.roofline import ORT_ALGORITHMS, ROOF_INDEX, expand_ops
from nnflash.models.metrics import conv_out, nn_degree, nn_mass, skip_sum
from nnflash.models.space import Space
from nnflash.search.memory import MB
from nnflash.search.types import SearchError

_RECORD_FIELDS = ("sample", "kind", "macs", "bytes", "bw", "ops", "in_ch", "out_ch", "kernel", "hw_in", "hw_out")
_ALIGN = 4  # onnxruntime reorders a tensor into NCHWc only when its channels are a multiple of 4


def _pad(c: np.ndarray, block: int) -> np.ndarray:
    return -(-c // block) * block


def _blocked(cin: np.ndarray, block: int) -> np.ndarray:
    return (cin < block) | (cin % _ALIGN == 0)


@dataclass(frozen=True)
class CellGeometry:
    """Where a cell sits: the spatial size of its input and of its layers."""

    index: int
    hw_in: int  # pixels of the tensor entering the cell
    hw: int  # pixels of the cell's layers (after the stride-2 first convolution for c > 0)
    cols: int  # output columns of the cell's convolutions


def geometry(space: Space) -> tuple[list[CellGeometry], int, int]:
    """Each cell's geometry, and the last cell's (height, columns)."""
    _, h, w = space.input_shape
    out = []
    for c in range(len(space.cells)):
        hw_in = h * w
        if c > 0:
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        out.append(CellGeometry(c, hw_in, h * w, w))
    return out, h, w


@dataclass
class CellCosts:
    """Costs of ``n`` (cell config, input state) pairs, and the state leaving each."""

    latency_ms: np.ndarray
    energy_mj: Optional[np.ndarray]
    params: np.ndarray
    macs: np.ndarray
    peak_memory_mb: np.ndarray
    nn_degree: np.ndarray
    nn_mass: np.ndarray
    out_width: np.ndarray
    out_blocked: np.ndarray


def _skip(i: int, w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Long-range channels of layer ``i`` (``min(tc, w*(i-1))``, 0 below layer 2)."""
    if i < 2:
        return np.zeros_like(w)
    return np.minimum(t, w * (i - 1))


class CellEvaluator:
    """Per-cell costs of one space on one deployment's cost models (see the module docstring)."""

    def __init__(self, space: Space, latency_model: CostModel, energy_model: Optional[CostModel] = None) -> None:
        if space.conv != "regular":
            raise SearchError(
                f"search: space {space.name!r} has {space.conv} convolutions; the search supports regular ones"
            )
        if any(min(c.depths) < 2 for c in space.cells):
            raise SearchError(f"search: space {space.name!r} has cells of depth < 2, which the search does not support")
        self.space = space
        self.latency_model = latency_model
        self.energy_model = energy_model
        self.cells, self.h_last, self.cols_last = geometry(space)
        self.num_classes = space.num_classes
        self.img_ch = space.input_shape[0]
        kind = latency_model.kind
        self.algo: Optional[str] = None
        self.block = 0
        if kind == "roofline":
            self.algo = str(latency_model.conv_algorithm_)  # type: ignore[attr-defined]
            if self.algo in ORT_ALGORITHMS:
                self.block = 8 if self.algo == "ort_nchwc8" else 16
        elif kind not in ("linear", "macs"):
            raise SearchError(f"search: cost model kind {kind!r} is not supported by the search's evaluator")
        if energy_model is not None:
            if energy_model.kind != "energy":
                raise SearchError(f"search: energy model kind {energy_model.kind!r} is not supported")
            if getattr(energy_model, "latency_model_", None) is not latency_model:
                raise SearchError("search: the energy model must bring the deployment's latency model")

    # ------------------------------------------------------------------ states

    @property
    def uses_layout(self) -> bool:
        """Whether the latency depends on the NCHWc layout of the tensors between cells."""
        return self.block > 0

    def out_blocked(self, d: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Layout of the tensor leaving cells ``(d, w, t)`` (always False without the graph)."""
        if not self.uses_layout:
            return np.zeros(len(d), dtype=bool)
        s_last = np.where(d >= 3, np.minimum(t, w * np.maximum(d - 2, 0)), 0)
        return _blocked(w + s_last, self.block)

    @property
    def constant_ms(self) -> float:
        m = self.latency_model
        if m.kind == "roofline":
            return float(m.constant_ms_)  # type: ignore[attr-defined]
        return float(m.intercept_ms_)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ layer records

    def _records(self, c: int, d: np.ndarray, w: np.ndarray, t: np.ndarray, cin: np.ndarray) -> dict[str, np.ndarray]:
        """The layer records of ``n`` cells as flat arrays (``sample``: the pair each belongs to),
        the same numbers :func:`nnflash.calibration.features.layer_records` gives."""
        g = self.cells[c]
        n = len(d)
        idx = np.arange(n)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in _RECORD_FIELDS}

        def add(mask: np.ndarray, kind: str, macs: Any, nbytes: Any, bw: Any, ops: Any, i_ch: Any, o_ch: Any,
                kernel: Any, hw_in: Any, hw_out: Any) -> None:  # fmt: skip
            m = np.flatnonzero(mask)
            if not len(m):
                return

            def pick(v: Any) -> np.ndarray:
                a = np.asarray(v, dtype=np.float64)
                return np.broadcast_to(a, (n,))[m] if a.ndim else np.full(len(m), float(a))

            cols["sample"].append(idx[m])
            cols["kind"].append(np.full(len(m), KIND_INDEX[kind]))
            for key, v in (("macs", macs), ("bytes", nbytes), ("bw", bw), ("ops", ops), ("in_ch", i_ch),
                           ("out_ch", o_ch), ("kernel", kernel), ("hw_in", hw_in), ("hw_out", hw_out)):  # fmt: skip
                cols[key].append(pick(v))

        for i in range(int(d.max())):
            active = d > i
            hw_in = g.hw_in if i == 0 else g.hw
            s = _skip(i, w, t)
            in_ch = cin if i == 0 else w + s
            if i >= 2:
                gat = active & (s > 0)
                pool = w * (i - 1) if i > 2 else np.zeros_like(w)
                gb = 4.0 * g.hw * (2 * pool + 2 * s + 2 * (w + s))
                add(gat, "gather", 0, gb, 0, 3 if i > 2 else 2, w + s, w + s, 1, g.hw, g.hw)
            if not (c == 0 and i == 0):
                bw = 4.0 * 2 * in_ch
                add(active, "bn", 0, bw + 8.0 * in_ch * hw_in, bw, 1, in_ch, in_ch, 1, hw_in, hw_in)
            params = 9 * in_ch * w
            macs = params * g.hw
            add(active, "conv", macs, 4.0 * params + 4.0 * in_ch * hw_in + 4.0 * w * g.hw, 4.0 * params, 1,
                in_ch, w, 3, hw_in, g.hw)  # fmt: skip
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}

    def _head_records(self, w: np.ndarray) -> dict[str, np.ndarray]:
        n = len(w)
        hw = self.h_last * self.cols_last
        nc = self.num_classes
        wf = w.astype(np.float64)
        rows = [
            ("bn", np.zeros(n), 8.0 * wf + 8.0 * wf * hw, 8.0 * wf, wf, wf, 1, hw, hw),
            ("pool", np.zeros(n), 4.0 * wf * hw + 4.0 * wf, np.zeros(n), wf, wf, self.h_last, hw, 1),
            ("linear", wf * nc, 4.0 * (wf * nc + nc) + 4.0 * wf + 4.0 * nc, 4.0 * (wf * nc + nc), wf, nc, 1, 1, 1),
        ]
        out: dict[str, list[np.ndarray]] = {k: [] for k in _RECORD_FIELDS}
        for kind, macs, nb, bw, ic, oc, k, hi, ho in rows:
            out["sample"].append(np.arange(n))
            out["kind"].append(np.full(n, KIND_INDEX[kind]))
            for key, v in (("macs", macs), ("bytes", nb), ("bw", bw), ("ops", 1), ("in_ch", ic), ("out_ch", oc),
                           ("kernel", k), ("hw_in", hi), ("hw_out", ho)):  # fmt: skip
                out[key].append(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy())
        return {k: np.concatenate(v) for k, v in out.items()}

    @staticmethod
    def _batch(r: dict[str, np.ndarray], n: int) -> LayerBatch:
        return LayerBatch(
            n=n,
            sample=r["sample"].astype(np.int64),
            kind=r["kind"].astype(np.int64),
            macs=r["macs"],
            bytes=r["bytes"],
            ops=r["ops"],
            in_ch=r["in_ch"],
            out_ch=r["out_ch"],
            kernel=r["kernel"],
            hw_in=r["hw_in"],
            hw_out=r["hw_out"],
        )

    def _latency_from_records(self, r: dict[str, np.ndarray], n: int) -> np.ndarray:
        m = self.latency_model
        if m.kind == "macs":
            return float(m.ms_per_gmac_) * np.bincount(r["sample"], weights=r["macs"], minlength=n) / 1e9  # type: ignore[attr-defined]
        if m.kind == "linear":
            return self._linear_features(r, n) @ np.asarray(m.coef_, dtype=np.float64)  # type: ignore[attr-defined]
        o = expand_ops(self._batch(r, n), str(self.algo))
        return m._times(o, m.ms_per_gflop_, m.ms_per_gb_, m.overhead_ms_, 0.0)  # type: ignore[attr-defined]

    def _linear_features(self, r: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The linear model's chosen features, summed per pair (network-level input/output sizes
        are constants of the space and are added in :attr:`constant_linear`)."""
        cols: dict[str, np.ndarray] = {}
        for k in KINDS:
            sel = r["kind"] == KIND_INDEX[k]
            cols[f"macs_{k}"] = np.bincount(r["sample"][sel], weights=r["macs"][sel], minlength=n)
            cols[f"bytes_{k}"] = np.bincount(r["sample"][sel], weights=r["bytes"][sel], minlength=n)
            cols[f"ops_{k}"] = np.bincount(r["sample"][sel], weights=r["ops"][sel], minlength=n)
        cols["macs_total"] = np.bincount(r["sample"], weights=r["macs"], minlength=n)
        cols["bytes_total"] = np.bincount(r["sample"], weights=r["bytes"], minlength=n)
        cols["bytes_weights"] = np.bincount(r["sample"], weights=r["bw"], minlength=n)
        cols["ops_total"] = np.bincount(r["sample"], weights=r["ops"], minlength=n)
        cols["input_bytes"] = np.zeros(n)
        cols["output_bytes"] = np.zeros(n)
        names = list(self.latency_model.feature_names_)  # type: ignore[attr-defined]
        return np.stack([cols[f] for f in names], axis=1)

    @property
    def constant(self) -> float:
        """Latency (ms) that no cell or head owns: the model's constant or intercept, and the
        linear model's terms on the network's input and output sizes."""
        const = self.constant_ms
        m = self.latency_model
        if m.kind == "linear":
            _, h, w = self.space.input_shape
            extra = {"input_bytes": 4.0 * self.img_ch * h * w, "output_bytes": 4.0 * self.num_classes}
            for name, coef in zip(m.feature_names_, m.coef_):  # type: ignore[attr-defined]
                const += float(coef) * extra.get(name, 0.0)
        return const

    # ------------------------------------------------------------------ onnxruntime's graph

    def _ort_cell(
        self, c: int, d: np.ndarray, w: np.ndarray, t: np.ndarray, cin: np.ndarray, blk_in: np.ndarray
    ) -> np.ndarray:
        """Latency (ms) of the operators onnxruntime runs for ``n`` cells (the rules of
        ``ort_graph_ops``), including the reorder of the incoming tensor that the cell's first
        convolution needs; the reorder of the cell's own output is owned by its reader."""
        m = self.latency_model
        B = self.block
        g = self.cells[c]
        n = len(d)
        total = np.zeros(n)
        r, bw_ = m.ms_per_gflop_, m.ms_per_gb_  # type: ignore[attr-defined]
        p = float(m.smoothness)  # type: ignore[attr-defined]
        ov = float(m.overhead_ms_)  # type: ignore[attr-defined]
        edge = 1.0 + float(m.edge_cost) * min(2.0 / g.cols, 1.0)  # type: ignore[attr-defined]

        def op(mask: np.ndarray, kind: str, flop: Any, nbytes: Any, ops: float = 1.0) -> None:
            k = ROOF_INDEX[kind]
            tc = np.broadcast_to(np.asarray(flop, dtype=np.float64) / 1e9 * r[k], (n,))
            tm = np.broadcast_to(np.asarray(nbytes, dtype=np.float64) / 1e9 * bw_[k], (n,))
            hi = np.maximum(np.maximum(tc, tm), 1e-300)
            t_op = hi * ((tc / hi) ** p + (tm / hi) ** p) ** (1.0 / p) + ov * ops
            total[:] += np.where(mask, t_op, 0.0)

        def reorder_bytes(ch: np.ndarray, px: float) -> np.ndarray:
            return 4.0 * (_pad(ch, B) + ch) * px

        def conv(mask: np.ndarray, cin_i: np.ndarray, x_blk: np.ndarray, px_in: float, src_reorder: Any) -> None:
            """A convolution reading ``cin_i`` channels; ``src_reorder``: bytes of the ReorderOutput
            its NCHW path needs when the input is blocked (``None``: owned elsewhere)."""
            blocked = _blocked(cin_i, B)
            cin_p = np.where(cin_i < B, cin_i, _pad(cin_i, B))
            cout_p = _pad(w, B)
            mb = mask & blocked
            op(mb & (cin_i >= B) & ~x_blk, "reorder", 0.0, 4.0 * (cin_i + cin_p) * px_in)
            op(mb & (cin_i < B) & x_blk, "reorder", 0.0, 4.0 * (_pad(cin_i, B) + cin_i) * px_in)
            flops = 2.0 * 9 * cin_p * cout_p * g.hw
            op(mb, "conv", flops * edge, 4.0 * (9 * cin_p * cout_p + cin_p * px_in + cout_p * g.hw))
            mu = mask & ~blocked
            if src_reorder is not None:
                op(mu & x_blk, "reorder", 0.0, src_reorder)
            col = 9.0 * cin_i * g.hw
            op(mu, "im2col", 0.0, 8.0 * col, ops=0.0)
            op(mu, "conv_im2col", 2.0 * col * w * edge, 4.0 * (9 * cin_i * w + col + w * g.hw))

        # layer 0: reads the incoming tensor (its only consumer: a pre-activation BN is folded)
        conv(d > 0, cin, blk_in, g.hw_in, reorder_bytes(cin, g.hw_in))
        blk_o = [_blocked(cin, B)]  # layout of each layer's output
        needs_reorder = [np.zeros(n, dtype=bool)]  # some NCHW operator reads that output
        has_skips = t > 0
        for i in range(1, int(d.max())):
            active = d > i
            s = _skip(i, w, t)
            gat = active & (i >= 2) & (s > 0)
            # consumers of o_{i-1}: the next layer, plus the skip pools of layers >= max(i+1, 2)
            ncons = 1 + np.where(has_skips, np.maximum(d - max(i + 1, 2), 0), 0)
            prev_blk = blk_o[i - 1]
            if i >= 2:
                if i >= 3:
                    p_blk = np.ones(n, dtype=bool)
                    for j in range(i - 1):
                        p_blk &= blk_o[j]
                    p_blk &= w % B == 0
                    for j in range(i - 1):
                        needs_reorder[j] |= gat & ~p_blk
                    pool_ch = w * (i - 1)
                    op(gat & p_blk, "reorder", 0.0, reorder_bytes(pool_ch, g.hw))
                    op(gat, "gather", 0.0, 8.0 * pool_ch * g.hw)  # Concat of the pool
                else:
                    needs_reorder[0] |= gat  # the Gather reads o_0 directly
                op(gat, "gather", 0.0, 8.0 * s * g.hw)  # Gather
                needs_reorder[i - 1] |= gat  # Concat(o_{i-1}, gathered) is NCHW
                op(gat, "gather", 0.0, 8.0 * (w + s) * g.hw)
                op(gat, "bn", 0.0, 8.0 * (w + s) * g.hw)  # BatchNormalization, Relu on the concat
                op(gat, "bn", 0.0, 8.0 * (w + s) * g.hw)
            plain = active & ~gat
            folded = plain & (ncons == 1)
            nchwc_bn = plain & (ncons > 1) & prev_blk
            nchw_bn = plain & (ncons > 1) & ~prev_blk
            op(nchwc_bn, "bn", 2.0 * _pad(w, B) * g.hw, 8.0 * _pad(w, B) * g.hw)
            op(nchw_bn, "bn", 0.0, 8.0 * w * g.hw)
            op(nchw_bn, "bn", 0.0, 8.0 * w * g.hw)
            x_blk = (folded & prev_blk) | nchwc_bn
            cin_i = w + s
            # an NCHW conv on a blocked input: a reorder of o_{i-1} (folded) or of the BN's output
            blocked = _blocked(cin_i, B)
            needs_reorder[i - 1] |= active & folded & prev_blk & ~blocked
            conv(active & ~folded, cin_i, x_blk & ~folded, g.hw, reorder_bytes(w, g.hw))
            conv(active & folded, cin_i, x_blk & folded, g.hw, None)
            blk_o.append(_blocked(cin_i, B))
            needs_reorder.append(np.zeros(n, dtype=bool))
        for j, need in enumerate(needs_reorder):
            op(need & blk_o[j] & (d > j), "reorder", 0.0, reorder_bytes(w, g.hw))
        return total

    def _ort_head(self, w: np.ndarray, blk: np.ndarray) -> np.ndarray:
        m = self.latency_model
        B = self.block
        hw = self.h_last * self.cols_last
        nc = self.num_classes
        r, bw_ = m.ms_per_gflop_, m.ms_per_gb_  # type: ignore[attr-defined]
        p = float(m.smoothness)  # type: ignore[attr-defined]
        ov = float(m.overhead_ms_)  # type: ignore[attr-defined]
        wf = w.astype(np.float64)

        def t_op(kind: str, flop: Any, nbytes: Any) -> np.ndarray:
            k = ROOF_INDEX[kind]
            tc = np.asarray(flop, dtype=np.float64) / 1e9 * r[k] + np.zeros_like(wf)
            tm = np.asarray(nbytes, dtype=np.float64) / 1e9 * bw_[k] + np.zeros_like(wf)
            hi = np.maximum(np.maximum(tc, tm), 1e-300)
            return hi * ((tc / hi) ** p + (tm / hi) ** p) ** (1.0 / p) + ov

        out = np.where(blk, t_op("reorder", 0.0, 4.0 * (_pad(w, B) + wf) * hw), 0.0)
        out = out + t_op("pool", 0.0, 4.0 * wf * hw) + t_op("add", 0.0, 0.0)
        out = out + t_op("linear", 2.0 * wf * nc, 4.0 * (wf * nc + nc) + 4.0 * (wf + nc))
        return out

    # ------------------------------------------------------------------ public

    def cell(
        self, c: int, d: np.ndarray, w: np.ndarray, t: np.ndarray, cin: np.ndarray, blk_in: np.ndarray
    ) -> CellCosts:
        """Costs of cell ``c`` with configs ``(d, w, t)`` entered by ``cin`` channels in layout
        ``blk_in`` (arrays of one length)."""
        d, w, t, cin = (np.asarray(a, dtype=np.int64) for a in (d, w, t, cin))
        blk_in = np.asarray(blk_in, dtype=bool)
        n = len(d)
        g = self.cells[c]
        r = self._records(c, d, w, t, cin)
        if self.uses_layout:
            latency = self._ort_cell(c, d, w, t, cin, blk_in)
        else:
            latency = self._latency_from_records(r, n)
        macs = np.bincount(r["sample"], weights=r["macs"], minlength=n)
        energy = None
        if self.energy_model is not None:
            e = self.energy_model
            nbytes = np.bincount(r["sample"], weights=r["bytes"], minlength=n)
            energy = float(e.idle_power_w_) * latency + float(e.pj_per_mac_) * macs * 1e-9  # type: ignore[attr-defined]
            energy = energy + float(e.pj_per_byte_) * nbytes * 1e-9  # type: ignore[attr-defined]
        s_tot = skip_sum(d, w, t)
        in_sum = cin + (d - 1) * w + s_tot
        pre_bn = in_sum - (cin if c == 0 else 0)
        params = 9 * w * in_sum + 2 * pre_bn
        cell_macs = 9 * w * in_sum * g.hw
        # peak live activations (search.memory): first layer, then the last (the largest) layer
        s_last = np.where(d >= 3, np.minimum(t, w * np.maximum(d - 2, 0)), 0)
        keep = (t > 0) & (d >= 3)
        live_last = np.where(keep, (d - 1) * w + np.where(s_last > 0, w + s_last, 0) + w, 2 * w)
        peak = np.maximum(cin * g.hw_in + w * g.hw, live_last * g.hw) * 4.0 / MB
        dd, ww, tt = d[:, None], w[:, None], t[:, None]
        return CellCosts(
            latency_ms=latency,
            energy_mj=energy,
            params=params.astype(np.float64),
            macs=cell_macs.astype(np.float64),
            peak_memory_mb=peak,
            nn_degree=nn_degree(dd, ww, tt),
            nn_mass=nn_mass(dd, ww, tt),
            out_width=w,
            out_blocked=self.out_blocked(d, w, t),
        )

    def head(self, w: np.ndarray, blk: np.ndarray) -> CellCosts:
        """Costs of the head on the last cell's output (``w`` channels in layout ``blk``)."""
        w = np.asarray(w, dtype=np.int64)
        blk = np.asarray(blk, dtype=bool)
        n = len(w)
        r = self._head_records(w)
        if self.uses_layout:
            latency = self._ort_head(w, blk)
        else:
            latency = self._latency_from_records(r, n)
        macs = np.bincount(r["sample"], weights=r["macs"], minlength=n)
        energy = None
        if self.energy_model is not None:
            e = self.energy_model
            nbytes = np.bincount(r["sample"], weights=r["bytes"], minlength=n)
            energy = float(e.idle_power_w_) * latency + float(e.pj_per_mac_) * macs * 1e-9  # type: ignore[attr-defined]
            energy = energy + float(e.pj_per_byte_) * nbytes * 1e-9  # type: ignore[attr-defined]
        nc = self.num_classes
        hw = self.h_last * self.cols_last
        return CellCosts(
            latency_ms=latency,
            energy_mj=energy,
            params=(2 * w + w * nc + nc).astype(np.float64),
            macs=(w * nc).astype(np.float64),
            peak_memory_mb=2.0 * w * hw * 4.0 / MB,
            nn_degree=np.zeros(n),
            nn_mass=np.zeros(n),
            out_width=w,
            out_blocked=blk,
        )

    @property
    def constant_energy(self) -> float:
        """Energy (mJ) of the constant latency (idle power x constant)."""
        if self.energy_model is None:
            return 0.0
        return float(self.energy_model.idle_power_w_) * self.constant  # type: ignore[attr-defined]


def network_costs(ev: CellEvaluator, d: np.ndarray, w: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Every cost of full configurations ``(n, cells)`` from the per-cell terms."""
    d, w, t = (np.atleast_2d(np.asarray(a, dtype=np.int64)) for a in (d, w, t))
    n, ncell = d.shape
    cin = np.full(n, ev.img_ch, dtype=np.int64)
    blk = np.zeros(n, dtype=bool)
    out: dict[str, Any] = {
        "latency_ms": np.full(n, ev.constant),
        "energy_mj": np.full(n, ev.constant_energy) if ev.energy_model is not None else None,
        "params": np.zeros(n),
        "macs": np.zeros(n),
        "peak_memory_mb": np.zeros(n),
        "nn_degree": np.zeros(n),
        "nn_mass": np.zeros(n),
    }
    for c in range(ncell):
        cc = ev.cell(c, d[:, c], w[:, c], t[:, c], cin, blk)
        for key in ("latency_ms", "params", "macs", "nn_degree", "nn_mass"):
            out[key] = out[key] + getattr(cc, key)
        if out["energy_mj"] is not None:
            out["energy_mj"] = out["energy_mj"] + cc.energy_mj
        out["peak_memory_mb"] = np.maximum(out["peak_memory_mb"], cc.peak_memory_mb)
        cin, blk = cc.out_width, cc.out_blocked
    hd = ev.head(cin, blk)
    for key in ("latency_ms", "params", "macs"):
        out[key] = out[key] + getattr(hd, key)
    if out["energy_mj"] is not None:
        out["energy_mj"] = out["energy_mj"] + hd.energy_mj
    out["peak_memory_mb"] = np.maximum(out["peak_memory_mb"], hd.peak_memory_mb)
    return out


__all__ = ["CellCosts", "CellEvaluator", "CellGeometry", "geometry", "network_costs"]
