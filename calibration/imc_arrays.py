"""Networks as padded per-layer arrays, the input of the in-memory-computing (IMC) model.

The IMC model (:mod:`nnflash.calibration.imc`) scores many network-and-hardware configurations at
once, so a network is not a list of objects but one row of ``(n, L)`` arrays: ``L`` is the largest
number of weight layers in the batch, and ``valid`` marks the real layers of each row (shorter
networks are padded with invalid layers, which cost nothing).

Only layers with weights map onto crossbars: ``conv``, ``pointwise``, ``depthwise``, ``grouped`` and
``linear``. A layer's weight matrix has ``kernel^2 * in_ch`` rows (a grouped or depthwise
convolution is stored block-diagonally, zeros off its groups) and ``out_ch`` weights per row.
NeuroSim counts a layer's input vectors as ``ceil((IFM - k + 1) / stride)`` per image dimension
(padding not counted); a linear layer has one. Pooling, BatchNorm, additions and concatenations map
to no crossbar; the feature maps they pass on are counted through the next weight layer's input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import LayerRecord, as_layer_tables

#: Layer kinds (``calibration.features.KINDS``) that hold weights, hence crossbars.
WEIGHT_KINDS: tuple[str, ...] = ("conv", "pointwise", "depthwise", "linear")


@dataclass(frozen=True)
class LayerArrays:
    """Weight layers of ``n`` networks as ``(n, L)`` float arrays (see the module docstring)."""

    valid: np.ndarray  # bool: a real layer (else padding)
    cin: np.ndarray  # input channels (linear: input features)
    cout: np.ndarray  # output channels (linear: output features)
    kernel: np.ndarray  # kernel size k (linear: 1)
    ifm: np.ndarray  # input feature-map height (linear: 1)
    nvec: np.ndarray  # input vectors per image, as NeuroSim counts them
    in_elems: np.ndarray  # input activations read by the layer
    out_elems: np.ndarray  # output activations written by the layer
    macs: np.ndarray  # multiply-accumulates (for operations per second and per joule)

    @property
    def n(self) -> int:
        return int(self.valid.shape[0])

    @property
    def rows(self) -> np.ndarray:
        """Weight-matrix rows ``kernel^2 * cin`` (zeros on padding)."""
        return np.where(self.valid, self.kernel**2 * self.cin, 0.0)

    def take(self, index: Any) -> LayerArrays:
        """The rows ``index`` (an integer array, a slice or a mask), e.g. to pair every network
        with several hardware configurations: ``net.take(np.repeat(np.arange(net.n), 24))``."""
        return LayerArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[tuple[float, ...]]]) -> LayerArrays:
        """From per-network lists of ``(cin, cout, kernel, ifm, nvec, in_elems, out_elems, macs)``."""
        if not rows:
            raise CostModelError("imc: no networks given")
        width = max(1, max(len(r) for r in rows))
        data = np.zeros((len(rows), width, 8))
        valid = np.zeros((len(rows), width), dtype=bool)
        for i, r in enumerate(rows):
            if not r:
                raise CostModelError(f"imc: network {i} has no layer with weights to map onto crossbars")
            data[i, : len(r)] = np.asarray(r, dtype=np.float64)
            valid[i, : len(r)] = True
        cols = [data[:, :, j] for j in range(8)]
        return cls(valid, *cols)

    @classmethod
    def from_specs(cls, X: Any) -> LayerArrays:
        """From specs (objects, dicts or layer tables): see :func:`layer_rows`."""
        return cls.from_rows([layer_rows(t) for t in as_layer_tables(X)])


def _nvec(size_in: int, kernel: int, stride: int) -> int:
    return max(1, math.ceil((size_in - kernel + 1) / stride))


def layer_rows(records: Sequence[LayerRecord]) -> list[tuple[float, ...]]:
    """The weight layers of one network's layer records as ``LayerArrays.from_rows`` rows.

    Records carry the input and output areas and the output width; the input height and width follow
    from the output's aspect ratio, and the stride from the ratio of input to output height."""
    out: list[tuple[float, ...]] = []
    for r in records:
        if r.kind not in WEIGHT_KINDS:
            continue
        if r.kind == "linear":
            out.append((r.in_ch, r.out_ch, 1, 1, 1, r.in_ch, r.out_ch, r.macs))
            continue
        w_out = r.w_out if r.w_out > 0 else max(1, round(math.sqrt(r.hw_out)))
        h_out = max(1, r.hw_out // w_out)
        h_in = max(1, round(math.sqrt(r.hw_in * h_out / w_out)))
        w_in = max(1, r.hw_in // h_in)
        stride = max(1, round(h_in / h_out))
        k = r.kernel
        nvec = _nvec(h_in, k, stride) * _nvec(w_in, k, stride)
        out.append((r.in_ch, r.out_ch, k, h_in, nvec, r.in_ch * r.hw_in, r.out_ch * r.hw_out, r.macs))
    return out


def random_plain_networks(n: int, seed: int = 0, max_layers: int = 10) -> LayerArrays:
    """``n`` distinct random plain (VGG-style) CIFAR-sized networks built directly as arrays (for
    benchmarks and tests of the vectorized model): 2..``max_layers`` 3x3 convolutions of 16..512
    channels on a 32x32x3 input, a 2x2 pool after some of them, one or two linear layers to 10
    classes. Every row equals ``from_specs`` of the ``vgg`` spec with those layers."""
    rng = np.random.default_rng(seed)
    rows: list[list[tuple[float, ...]]] = []
    for _ in range(n):
        rows.append(_plain_rows(plain_network_layers(rng, max_layers)))
    return LayerArrays.from_rows(rows)


def plain_network_layers(rng: np.random.Generator, max_layers: int = 10) -> list[dict[str, Any]]:
    """One random ``vgg``-family layer list (see :func:`random_plain_networks`)."""
    n_conv = int(rng.integers(2, max_layers + 1))
    h = 32
    layers: list[dict[str, Any]] = []
    for _ in range(n_conv):
        layers.append({"type": "conv", "out": int(rng.integers(16, 513)), "kernel": 3})
        if h > 2 and rng.random() < 0.4:
            layers.append({"type": "pool"})
            h //= 2
    for _ in range(int(rng.integers(0, 2))):
        layers.append({"type": "linear", "out": int(rng.integers(32, 1025))})
    return layers


def _plain_rows(layers: list[dict[str, Any]], c: int = 3, h: int = 32, classes: int = 10) -> list[tuple[float, ...]]:
    rows: list[tuple[float, ...]] = []
    for entry in layers:
        if entry["type"] == "conv":
            k, co = entry["kernel"], entry["out"]
            rows.append((c, co, k, h, _nvec(h, k, 1) ** 2, c * h * h, co * h * h, k * k * c * co * h * h))
            c = co
        elif entry["type"] == "pool":
            h //= 2
        else:
            cin = c * h * h
            rows.append((cin, entry["out"], 1, 1, 1, cin, entry["out"], cin * entry["out"]))
            c, h = entry["out"], 1
    cin = c * h * h
    rows.append((cin, classes, 1, 1, 1, cin, classes, cin * classes))
    return rows


def dense_layer_arrays(
    depth: Any,
    width: Any,
    tc: Any,
    *,
    conv: str = "regular",
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
) -> LayerArrays:
    """The weight layers of dense-family networks straight from ``(n, cells)`` arrays of
    ``depth``, ``width`` and ``tc`` (what a search samples), without building specs: the valid
    layers of row ``i`` equal ``from_specs`` of that spec, in order (slots of layers deeper than a
    row's cell are padding). Square inputs only."""
    from nnflash.models.metrics import conv_out

    d = np.atleast_2d(np.asarray(depth, dtype=np.int64))
    w = np.atleast_2d(np.asarray(width, dtype=np.int64))
    t = np.atleast_2d(np.asarray(tc, dtype=np.int64))
    n, cells = d.shape
    c_img, h, w_img = input_shape
    if h != w_img:
        raise CostModelError("imc: dense_layer_arrays needs a square input")
    if conv not in ("regular", "depthwise"):
        raise CostModelError(f"imc: conv must be regular or depthwise, got {conv!r}")
    slots: list[list[np.ndarray]] = []  # per layer slot: valid, cin, cout, k, ifm, nvec, in, out, macs

    def add(valid: np.ndarray, cin: Any, cout: Any, k: int, h_in: int, stride: int, depthwise: bool = False) -> int:
        h_out = int(conv_out(h_in, k, stride, k // 2))
        nv = max(1, -(-(h_in - k + 1) // stride)) ** 2
        ci = np.broadcast_to(np.asarray(cin, dtype=np.float64), (n,))
        co = np.broadcast_to(np.asarray(cout, dtype=np.float64), (n,))
        macs = co * (1.0 if depthwise else ci) * k * k * h_out * h_out
        full = np.full
        slots.append(
            [
                valid,
                ci,
                co,
                full(n, float(k)),
                full(n, float(h_in)),
                full(n, float(nv)),
                ci * h_in**2,
                co * h_out**2,
                macs,
            ]
        )
        return h_out

    cin: np.ndarray = np.full(n, c_img, dtype=np.int64)
    for c in range(cells):
        wc, dc, tcc = w[:, c], d[:, c], t[:, c]
        for i in range(int(d[:, c].max())):
            valid = i < dc
            stride = 2 if (c > 0 and i == 0) else 1
            if i == 0:
                in_ch = cin
            elif i == 1:
                in_ch = wc
            else:
                in_ch = wc + np.minimum(tcc, wc * (i - 1))
            if conv == "regular":
                h_out = add(valid, in_ch, wc, 3, h, stride)
            else:
                add(valid, in_ch, wc, 1, h, 1)
                h_out = add(valid, wc, wc, 3, h, stride, depthwise=True)
                add(valid, wc, wc, 1, h_out, 1)
            h = h_out
        cin = wc
    add(np.ones(n, dtype=bool), cin, num_classes, 1, 1, 1)
    arr = [np.stack(x, axis=1) for x in zip(*slots)]
    valid_all = arr[0].astype(bool)
    return LayerArrays(valid_all, *[np.where(valid_all, a, 0.0) for a in arr[1:]])
