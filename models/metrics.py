"""Analytic metrics of a spec, computed without torch.

Topology metrics
----------------
- **NN-Density** of a dense cell: ``rho_c = sum_i s_{c,i} / sum_i w_c*(i-1)`` over layers
  ``i = 2..d_c-1`` (the share of possible long-range channels that are used); 0 for cells with fewer
  than three layers, which have no possible long-range links.
- **NN-Mass**: ``sum_c rho_c * w_c * d_c`` for concatenation skips. For addition skips (ResNet,
  Wide-ResNet, ResNeXt, MobileNetV2) the per-block formulas of the NN-Mass paper, summed over blocks.
- **NN-Degree** (our definition, following FLASH's idea of an analytical degree of a network with
  skip connections): the average number of input channels per layer of a cell, summed over cells,
  ``g = sum_c (w_c + (1/d_c) * sum_i s_{c,i})``: each output channel of a layer is connected to the
  ``w_c`` channels of the previous layer plus the concatenated long-range channels.

Counting rules
--------------
- ``params``: every trainable parameter (conv and linear weights, linear biases, BatchNorm weight
  and bias); BatchNorm running statistics are buffers, not parameters.
- ``macs``: multiply-accumulates of convolutions and linear layers for one input (batch 1).
  BatchNorm, activations, pooling, concatenation and additions are not counted as MACs; the per-layer
  table still lists them with the bytes they move.
- Bytes assume float32 tensors: weights ``4 * params``, activations in and out ``4 * C * H * W``.

The dense-family functions accept numpy arrays of configurations (``depth``, ``width``, ``tc`` of
shape ``(n, cells)``) so a search can score millions of candidates without building a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nnflash.models.nb201 import CONV_OPS, EDGES, Nb201Spec, cell_nn_degree, cell_nn_mass
from nnflash.models.spec import AnySpec, DenseSpec, MlpSpec, MobileNetV2Spec, ResNetSpec, VggSpec

BYTES_PER_ELEMENT = 4


# ------------------------------------------------------------------------ vectorized dense metrics


def _as_int_array(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.int64)
    return a[None, :] if a.ndim == 1 else a


def skip_sum(depth: Any, width: Any, tc: Any) -> np.ndarray:
    """``sum_{i=2}^{d-1} min(tc, w*(i-1))`` in closed form, elementwise over arrays."""
    d, w, t = np.asarray(depth, np.int64), np.asarray(width, np.int64), np.asarray(tc, np.int64)
    k = np.maximum(d - 2, 0)  # number of layers that can receive links, k-th gets min(t, w*k)
    q = np.minimum(t // w, k)  # layers that are not yet capped by t
    return w * q * (q + 1) // 2 + t * (k - q)


def possible_skips(depth: Any, width: Any) -> np.ndarray:
    """``sum_{i=2}^{d-1} w*(i-1) = w*(d-1)*(d-2)/2``."""
    d, w = np.asarray(depth, np.int64), np.asarray(width, np.int64)
    return w * np.maximum(d - 1, 0) * np.maximum(d - 2, 0) // 2


def nn_density(depth: Any, width: Any, tc: Any) -> np.ndarray:
    s = skip_sum(depth, width, tc)
    p = possible_skips(depth, width)
    return np.where(p > 0, s / np.maximum(p, 1), 0.0)


def nn_mass(depth: Any, width: Any, tc: Any) -> np.ndarray:
    """NN-Mass of dense/mlp configurations; arrays ``(n, cells)`` -> ``(n,)``."""
    d, w, t = _as_int_array(depth), _as_int_array(width), _as_int_array(tc)
    return (nn_density(d, w, t) * w * d).sum(axis=-1)


def nn_degree(depth: Any, width: Any, tc: Any) -> np.ndarray:
    """NN-Degree (our definition, see the module docstring); arrays ``(n, cells)`` -> ``(n,)``."""
    d, w, t = _as_int_array(depth), _as_int_array(width), _as_int_array(tc)
    return (w + skip_sum(d, w, t) / d).sum(axis=-1)


def conv_out(h: Any, kernel: int, stride: int, pad: int) -> Any:
    return (h + 2 * pad - kernel) // stride + 1


def dense_params_macs(
    depth: Any,
    width: Any,
    tc: Any,
    *,
    conv: str = "regular",
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Parameter and MAC counts of dense-family CNNs, vectorized over ``(n, cells)`` arrays."""
    d, w, t = _as_int_array(depth), _as_int_array(width), _as_int_array(tc)
    n, ncell = d.shape
    c_img, h, wd = input_shape
    params = np.zeros(n, np.int64)
    macs = np.zeros(n, np.int64)
    cin = np.full(n, c_img, np.int64)
    for c in range(ncell):
        dc, wc, tcc = d[:, c], w[:, c], t[:, c]
        h_in, w_in = h, wd
        if c > 0:
            h, wd = conv_out(h, 3, 2, 1), conv_out(wd, 3, 2, 1)
        s = skip_sum(dc, wc, tcc)
        in_sum = cin + (dc - 1) * wc + s
        pre_bn = in_sum - (cin if c == 0 else 0)  # the stem sees the raw image: no BN before it
        if conv == "regular":
            params += 9 * wc * in_sum + 2 * pre_bn
            macs += 9 * wc * in_sum * h * wd
        else:
            params += wc * in_sum + 9 * wc * dc + wc * wc * dc + 2 * pre_bn + 4 * wc * dc
            macs += wc * (cin * h_in * w_in + (in_sum - cin) * h * wd) + (9 * wc + wc * wc) * dc * h * wd
        cin = wc
    params += 2 * cin + cin * num_classes + num_classes
    macs += cin * num_classes
    return params, macs


def dense_metrics(
    depth: Any,
    width: Any,
    tc: Any,
    *,
    conv: str = "regular",
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
) -> dict[str, np.ndarray]:
    """All dense-family metrics for arrays of configurations of shape ``(n, cells)``."""
    d, w, t = _as_int_array(depth), _as_int_array(width), _as_int_array(tc)
    params, macs = dense_params_macs(d, w, t, conv=conv, input_shape=input_shape, num_classes=num_classes)
    return {
        "nn_density": nn_density(d, w, t),
        "nn_mass": nn_mass(d, w, t),
        "nn_degree": nn_degree(d, w, t),
        "params": params,
        "macs": macs,
    }


# ---------------------------------------------------------------------------- per-layer tables


#: Where a layer sits in the network (:attr:`Layer.section`).
SECTIONS: tuple[str, ...] = ("stem", "body", "head")


@dataclass(frozen=True)
class Layer:
    """One operator of a network with its analytic costs (batch 1, float32).

    Its place in the network is structured data (``section``, ``cell``, ``index``, ``role``);
    ``name`` (``c0.l3.conv``, ``s1.b0.down``, ``head.fc``) is for people and is never parsed.
    """

    name: str
    kind: str  # conv, pointwise, depthwise, grouped, linear, bn, gather, pool, add
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    groups: int
    h_in: int
    w_in: int
    h_out: int
    w_out: int
    params: int
    macs: int
    #: ``stem``, ``body`` (the repeated cells) or ``head`` (:data:`SECTIONS`).
    section: str
    #: In the body: the cell the layer belongs to (a dense/mlp cell, a ResNet stage, a
    #: MobileNetV2 stage, i.e. a row of its ``setting``; nb201: cells and reduction blocks numbered
    #: in order); ``None`` in the stem and the head.
    cell: int | None
    #: In the body: the layer's position in its cell (dense/mlp: layer ``i``; ResNet, MobileNetV2:
    #: the block within the stage); ``None`` in the stem and the head.
    index: int | None
    #: The operator's job in its layer, block, stem or head: ``conv``, ``bn``, ``gather`` (dense
    #: ``regular``); ``pw1``, ``bn1``, ``dw``, ``bn2``, ``pw2`` (dense ``depthwise``); ``fc`` (mlp,
    #: head); ``conv1``..``conv3``, ``bn1``..``bn3``, ``down``, ``down_bn``, ``add`` (ResNet);
    #: ``expand``, ``bn0``, ``dw``, ``bn1``, ``project``, ``bn2``, ``add`` (MobileNetV2); ``relu``,
    #: ``conv``, ``bn``, ``pool``, ``add`` (nb201 cells, ``index`` = the edge), ``relu_a``, ``conv_a``,
    #: ``bn_a``, ``relu_b``, ``conv_b``, ``bn_b``, ``down_pool``, ``down``, ``add`` (nb201 reduction
    #: blocks); ``conv``, ``bn``, ``pool``, ``bias`` (stem, head).
    role: str

    @property
    def bytes_weights(self) -> int:
        return BYTES_PER_ELEMENT * self.params

    @property
    def bytes_in(self) -> int:
        return BYTES_PER_ELEMENT * self.in_ch * self.h_in * self.w_in

    @property
    def bytes_out(self) -> int:
        return BYTES_PER_ELEMENT * self.out_ch * self.h_out * self.w_out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(bytes_weights=self.bytes_weights, bytes_in=self.bytes_in, bytes_out=self.bytes_out)
        return d


@dataclass(frozen=True)
class _At:
    """A place in the network: the structured fields of its layers and the prefix of their names."""

    prefix: str
    section: str
    cell: int | None = None
    index: int | None = None

    def place(self, role: str) -> dict[str, Any]:
        return {
            "name": f"{self.prefix}.{role}",
            "section": self.section,
            "cell": self.cell,
            "index": self.index,
            "role": role,
        }


_STEM = _At("stem", "stem")
_HEAD = _At("head", "head")


def _op(
    at: _At,
    role: str,
    kind: str,
    cin: int,
    cout: int,
    k: int,
    s: int,
    groups: int,
    h: int,
    w: int,
    ho: int,
    wo: int,
    params: int,
    macs: int,
) -> Layer:
    return Layer(
        kind=kind,
        in_ch=cin,
        out_ch=cout,
        kernel=k,
        stride=s,
        groups=groups,
        h_in=h,
        w_in=w,
        h_out=ho,
        w_out=wo,
        params=params,
        macs=macs,
        **at.place(role),
    )


def _conv(
    at: _At,
    role: str,
    cin: int,
    cout: int,
    k: int,
    s: int,
    h: int,
    w: int,
    groups: int = 1,
    pad: int | None = None,
    bias: bool = False,
) -> tuple[Layer, int, int]:
    p = k // 2 if pad is None else pad
    ho, wo = conv_out(h, k, s, p), conv_out(w, k, s, p)
    params = cout * (cin // groups) * k * k + (cout if bias else 0)
    macs = cout * (cin // groups) * k * k * ho * wo
    if groups == 1:
        kind = "pointwise" if k == 1 else "conv"
    else:
        kind = "depthwise" if groups == cin == cout else "grouped"
    return _op(at, role, kind, cin, cout, k, s, groups, h, w, ho, wo, params, macs), ho, wo


def _bn(at: _At, role: str, c: int, h: int, w: int) -> Layer:
    return _op(at, role, "bn", c, c, 1, 1, 1, h, w, h, w, 2 * c, 0)


def _linear(at: _At, role: str, cin: int, cout: int) -> Layer:
    return _op(at, role, "linear", cin, cout, 1, 1, 1, 1, 1, 1, 1, cin * cout + cout, cin * cout)


def _dense_layers(spec: DenseSpec) -> list[Layer]:
    out: list[Layer] = []
    cin, h, w = spec.input_shape
    for c, cell in enumerate(spec.cells):
        wc = cell.width
        for i in range(cell.depth):
            at = _At(f"c{c}.l{i}", "body", c, i)
            stride = 2 if (c > 0 and i == 0) else 1
            if i == 0:
                in_ch = cin
            elif i == 1:
                in_ch = wc
            else:
                s = len(spec.skips[c][i])
                in_ch = wc + s
                if s:
                    out.append(_op(at, "gather", "gather", in_ch, in_ch, 1, 1, 1, h, w, h, w, 0, 0))
            if not (c == 0 and i == 0):
                out.append(_bn(at, "bn", in_ch, h, w))
            if spec.conv == "regular":
                layer, h2, w2 = _conv(at, "conv", in_ch, wc, 3, stride, h, w)
                out.append(layer)
            else:
                pw1, _, _ = _conv(at, "pw1", in_ch, wc, 1, 1, h, w)
                out.append(pw1)
                out.append(_bn(at, "bn1", wc, h, w))
                dw, h2, w2 = _conv(at, "dw", wc, wc, 3, stride, h, w, groups=wc)
                out.append(dw)
                out.append(_bn(at, "bn2", wc, h2, w2))
                pw2, _, _ = _conv(at, "pw2", wc, wc, 1, 1, h2, w2)
                out.append(pw2)
            h, w = h2, w2
        cin = wc
    out.append(_bn(_HEAD, "bn", cin, h, w))
    out.append(_op(_HEAD, "pool", "pool", cin, cin, h, 1, 1, h, w, 1, 1, 0, 0))
    out.append(_linear(_HEAD, "fc", cin, spec.num_classes))
    return out


def _mlp_layers(spec: MlpSpec) -> list[Layer]:
    out: list[Layer] = []
    cin = spec.input_shape[0]
    for c, cell in enumerate(spec.cells):
        for i in range(cell.depth):
            at = _At(f"c{c}.l{i}", "body", c, i)
            if i == 0:
                in_ch = cin
            elif i == 1:
                in_ch = cell.width
            else:
                s = len(spec.skips[c][i])
                in_ch = cell.width + s
                if s:
                    out.append(_op(at, "gather", "gather", in_ch, in_ch, 1, 1, 1, 1, 1, 1, 1, 0, 0))
            out.append(_linear(at, "fc", in_ch, cell.width))
        cin = cell.width
    out.append(_linear(_HEAD, "fc", cin, spec.num_classes))
    return out


def _resnet_layers(spec: ResNetSpec) -> list[Layer]:
    out: list[Layer] = []
    c0, h, w = spec.input_shape
    stem = spec.stem_width
    layer, h, w = _conv(_STEM, "conv", c0, stem, 7, 2, h, w, pad=3)
    out += [layer, _bn(_STEM, "bn", stem, h, w)]
    ho, wo = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    out.append(_op(_STEM, "pool", "pool", stem, stem, 3, 2, 1, h, w, ho, wo, 0, 0))
    h, w = ho, wo
    inplanes = stem
    exp = 1 if spec.block == "basic" else 4
    for k, (planes, n) in enumerate(zip(spec.stage_planes(), spec.layers)):
        for b in range(n):
            stride = 2 if (k > 0 and b == 0) else 1
            at = _At(f"s{k}.b{b}", "body", k, b)
            if spec.block == "basic":
                l1, h1, w1 = _conv(at, "conv1", inplanes, planes, 3, stride, h, w)
                l2, _, _ = _conv(at, "conv2", planes, planes, 3, 1, h1, w1)
                out += [l1, _bn(at, "bn1", planes, h1, w1), l2, _bn(at, "bn2", planes, h1, w1)]
            else:
                width = int(planes * spec.width_per_group / 64) * spec.groups
                l1, _, _ = _conv(at, "conv1", inplanes, width, 1, 1, h, w)
                l2, h1, w1 = _conv(at, "conv2", width, width, 3, stride, h, w, groups=spec.groups)
                l3, _, _ = _conv(at, "conv3", width, planes * exp, 1, 1, h1, w1)
                out += [
                    l1,
                    _bn(at, "bn1", width, h, w),
                    l2,
                    _bn(at, "bn2", width, h1, w1),
                    l3,
                    _bn(at, "bn3", planes * exp, h1, w1),
                ]
            if stride != 1 or inplanes != planes * exp:
                ld, _, _ = _conv(at, "down", inplanes, planes * exp, 1, stride, h, w, pad=0)
                out += [ld, _bn(at, "down_bn", planes * exp, h1, w1)]
            out.append(_op(at, "add", "add", planes * exp, planes * exp, 1, 1, 1, h1, w1, h1, w1, 0, 0))
            inplanes = planes * exp
            h, w = h1, w1
    out.append(_op(_HEAD, "pool", "pool", inplanes, inplanes, h, 1, 1, h, w, 1, 1, 0, 0))
    out.append(_linear(_HEAD, "fc", inplanes, spec.num_classes))
    return out


def _mobilenetv2_layers(spec: MobileNetV2Spec) -> list[Layer]:
    out: list[Layer] = []
    c0, h, w = spec.input_shape
    stem = spec.stem_width
    layer, h, w = _conv(_STEM, "conv", c0, stem, 3, 2, h, w)
    out += [layer, _bn(_STEM, "bn", stem, h, w)]
    # (stage, block within the stage) of every block, in the order of spec.blocks()
    places = [(row, k) for row, (_, _, n, _) in enumerate(spec.setting) for k in range(n)]
    for b, ((inp, oup, stride, t), (row, k)) in enumerate(zip(spec.blocks(), places)):
        hidden = int(round(inp * t))
        at = _At(f"b{b}", "body", row, k)
        h_in, w_in = h, w
        if t != 1:
            lx, _, _ = _conv(at, "expand", inp, hidden, 1, 1, h, w)
            out += [lx, _bn(at, "bn0", hidden, h, w)]
        ld, h, w = _conv(at, "dw", hidden, hidden, 3, stride, h, w, groups=hidden)
        lp, _, _ = _conv(at, "project", hidden, oup, 1, 1, h, w)
        out += [ld, _bn(at, "bn1", hidden, h, w), lp, _bn(at, "bn2", oup, h, w)]
        if stride == 1 and inp == oup:
            out.append(_op(at, "add", "add", oup, oup, 1, 1, 1, h_in, w_in, h, w, 0, 0))
    last = spec.head_width
    lc, _, _ = _conv(_HEAD, "conv", spec.blocks()[-1][1], last, 1, 1, h, w)
    out += [lc, _bn(_HEAD, "bn", last, h, w)]
    out.append(_op(_HEAD, "pool", "pool", last, last, h, 1, 1, h, w, 1, 1, 0, 0))
    out.append(_linear(_HEAD, "fc", last, spec.num_classes))
    return out


def _nb201_cell(
    out: list[Layer], at: _At, ops: tuple[str, ...], live: tuple[bool, ...], c: int, h: int, w: int
) -> None:
    """The operators of one effective NAS-Bench-201 cell (dead edges left out); ``index`` is the
    edge (0..5, :data:`nnflash.models.nb201.EDGES`), adds of a node carry the node's last edge."""
    for e, (op, ok) in enumerate(zip(ops, live)):
        if not ok:
            continue
        eat = _At(f"{at.prefix}.e{EDGES[e][1]}{EDGES[e][0]}", "body", at.cell, e)
        if op in CONV_OPS:
            k = CONV_OPS[op]
            out.append(_op(eat, "relu", "bn", c, c, 1, 1, 1, h, w, h, w, 0, 0))
            layer, _, _ = _conv(eat, "conv", c, c, k, 1, h, w)
            out += [layer, _bn(eat, "bn", c, h, w)]
        elif op == "avg_pool_3x3":
            out.append(_op(eat, "pool", "pool", c, c, 3, 1, 1, h, w, h, w, 0, 0))
        node = EDGES[e][0]
        if any(live[f] for f in range(e) if EDGES[f][0] == node):  # a second input joins the sum
            out.append(_op(eat, "add", "add", c, c, 1, 1, 1, h, w, h, w, 0, 0))


def _nb201_layers(spec: Nb201Spec) -> list[Layer]:
    """NAS-Bench-201's CIFAR skeleton around the effective cell (``models.nb201``): stem, 3 stages of
    cells joined by stride-2 ResNet basic blocks, head. Body units (``cell``) are numbered in order,
    cells and reduction blocks alike. A cell without a path leaves the constant logits: a mean of the
    input (the exported graph keeps its input) and the learnable logits added to it."""
    graph = spec.graph
    ops, live = graph.ops, graph.live
    c0, h, w = spec.input_shape
    if not graph.has_path:
        k = spec.num_classes
        return [
            _op(_HEAD, "pool", "pool", c0, 1, h, 1, 1, h, w, 1, 1, 0, 0),
            _op(_HEAD, "bias", "add", k, k, 1, 1, 1, 1, 1, 1, 1, k, 0),
        ]
    out: list[Layer] = []
    widths = spec.stage_widths()
    layer, h, w = _conv(_STEM, "conv", c0, widths[0], 3, 1, h, w)
    out += [layer, _bn(_STEM, "bn", widths[0], h, w)]
    unit = 0
    cin = widths[0]
    for s, c in enumerate(widths):
        if s > 0:
            at = _At(f"s{s}.reduce", "body", unit, 0)
            out.append(_op(at, "relu_a", "bn", cin, cin, 1, 1, 1, h, w, h, w, 0, 0))
            la, h2, w2 = _conv(at, "conv_a", cin, c, 3, 2, h, w)
            out += [la, _bn(at, "bn_a", c, h2, w2)]
            out.append(_op(at, "relu_b", "bn", c, c, 1, 1, 1, h2, w2, h2, w2, 0, 0))
            lb, _, _ = _conv(at, "conv_b", c, c, 3, 1, h2, w2)
            out += [lb, _bn(at, "bn_b", c, h2, w2)]
            out.append(_op(at, "down_pool", "pool", cin, cin, 2, 2, 1, h, w, h2, w2, 0, 0))
            ld, _, _ = _conv(at, "down", cin, c, 1, 1, h2, w2)
            out.append(ld)
            out.append(_op(at, "add", "add", c, c, 1, 1, 1, h2, w2, h2, w2, 0, 0))
            h, w = h2, w2
            unit += 1
        for k in range(spec.cells_per_stage):
            _nb201_cell(out, _At(f"s{s}.c{k}", "body", unit), ops, live, c, h, w)
            unit += 1
        cin = c
    out.append(_bn(_HEAD, "bn", cin, h, w))
    out.append(_op(_HEAD, "pool", "pool", cin, cin, h, 1, 1, h, w, 1, 1, 0, 0))
    out.append(_linear(_HEAD, "fc", cin, spec.num_classes))
    return out


def nb201_topology(spec: Nb201Spec) -> dict[str, Any]:
    """NN-Mass and NN-Degree of an nb201 network (ours, ``models.nb201``): the per-cell values summed
    over the cells of the three stages; the reduction blocks add the ResNet BasicBlock's
    ``inplanes + planes`` to NN-Mass. Both are 0 for a network without a path through its cell."""
    graph = spec.graph
    if not graph.has_path:
        return {"nn_mass": 0.0, "nn_degree": 0.0, "nn_mass_per_cell": [0.0, 0.0, 0.0]}
    widths = spec.stage_widths()
    per_cell = [cell_nn_mass(graph, c) for c in widths]
    reduce = float(sum(widths[s - 1] + widths[s] for s in (1, 2)))
    mass = spec.cells_per_stage * sum(per_cell) + reduce
    degree = spec.cells_per_stage * sum(cell_nn_degree(graph, c) for c in widths)
    return {"nn_mass": float(mass), "nn_degree": float(degree), "nn_mass_per_cell": per_cell}


def _vgg_layers(spec: VggSpec) -> list[Layer]:
    out: list[Layer] = []
    c, h, w = spec.input_shape
    stage, pos, hidden = 0, 0, 0
    for entry in spec.layers:
        at = _At(f"s{stage}.l{pos}", "body", stage, pos)
        if entry.type == "conv":
            layer, h, w = _conv(at, "conv", c, entry.out, entry.kernel, 1, h, w, bias=spec.bias)
            out.append(layer)
            c = entry.out
            if spec.batch_norm:
                out.append(_bn(at, "bn", c, h, w))
            pos += 1
        elif entry.type == "pool":
            out.append(_op(at, "pool", "pool", c, c, 2, 2, 1, h, w, h // 2, w // 2, 0, 0))
            h, w = h // 2, w // 2
            stage, pos = stage + 1, 0
        else:
            out.append(_linear_bias(_At(f"fc{hidden}", "head"), "fc", c * h * w, entry.out, spec.bias))
            c, h, w = entry.out, 1, 1
            hidden += 1
    out.append(_linear_bias(_HEAD, "fc", c * h * w, spec.num_classes, spec.bias))
    return out


def _linear_bias(at: _At, role: str, cin: int, cout: int, bias: bool) -> Layer:
    return _op(at, role, "linear", cin, cout, 1, 1, 1, 1, 1, 1, 1, cin * cout + (cout if bias else 0), cin * cout)


def layer_table(spec: AnySpec) -> list[Layer]:
    """Every operator of the network in execution order, with params, MACs and bytes moved."""
    if isinstance(spec, DenseSpec):
        return _dense_layers(spec)
    if isinstance(spec, MlpSpec):
        return _mlp_layers(spec)
    if isinstance(spec, ResNetSpec):
        return _resnet_layers(spec)
    if isinstance(spec, MobileNetV2Spec):
        return _mobilenetv2_layers(spec)
    if isinstance(spec, VggSpec):
        return _vgg_layers(spec)
    if isinstance(spec, Nb201Spec):
        return _nb201_layers(spec)
    raise TypeError(f"not a spec: {type(spec).__name__}")


# ------------------------------------------------------------------------ addition-type NN-Mass


def resnet_block_masses(spec: ResNetSpec) -> list[float]:
    """Per-block NN-Mass of a ResNet: BasicBlock ``inplanes + planes``; Bottleneck
    ``(inplanes + 2*width) * inplanes / (2*inplanes + width)``."""
    masses = []
    inplanes = spec.stem_width
    exp = 1 if spec.block == "basic" else 4
    for planes, n in zip(spec.stage_planes(), spec.layers):
        for _ in range(n):
            if spec.block == "basic":
                masses.append(float(inplanes + planes))
            else:
                width = int(planes * spec.width_per_group / 64) * spec.groups
                masses.append((inplanes + 2 * width) * inplanes / (2 * inplanes + width))
            inplanes = planes * exp
    return masses


def mobilenetv2_block_masses(spec: MobileNetV2Spec) -> list[float]:
    """Per-block NN-Mass of MobileNetV2: ``(inp + 2*hidden) * inp / (2*inp + hidden)`` for blocks
    with a residual connection (stride 1 and ``inp == oup``), else 0."""
    masses = []
    for inp, oup, stride, t in spec.blocks():
        hidden = int(round(inp * t))
        masses.append((inp + 2 * hidden) * inp / (2 * inp + hidden) if (stride == 1 and inp == oup) else 0.0)
    return masses


# ----------------------------------------------------------------------------- one spec, all


def compute_metrics(spec: AnySpec) -> dict[str, Any]:
    """The metrics of one spec as a JSON-ready dict (the ``nnflash metrics --json`` object)."""
    layers = layer_table(spec)
    out: dict[str, Any] = {"spec_id": spec.spec_id, "family": spec.family}
    if isinstance(spec, (DenseSpec, MlpSpec)):
        d = np.array([[c.depth for c in spec.cells]])
        w = np.array([[c.width for c in spec.cells]])
        t = np.array([[c.tc for c in spec.cells]])
        out["nn_mass"] = float(nn_mass(d, w, t)[0])
        out["nn_density"] = [float(x) for x in nn_density(d, w, t)[0]]
        out["nn_degree"] = float(nn_degree(d, w, t)[0])
    elif isinstance(spec, Nb201Spec):
        topo = nb201_topology(spec)
        out["nn_mass"] = topo["nn_mass"]
        out["nn_degree"] = topo["nn_degree"]
        out["nn_mass_per_cell"] = topo["nn_mass_per_cell"]
        graph = spec.graph
        out["arch"] = spec.arch
        out["constant_output"] = not graph.has_path
        out["live_ops"] = list(graph.live_ops())
    elif isinstance(spec, VggSpec):
        out["nn_mass"] = 0.0  # a plain network has no skip connections
    elif isinstance(spec, ResNetSpec):
        bm = resnet_block_masses(spec)
        out["nn_mass"] = float(sum(bm))
        out["nn_mass_per_block"] = bm
    else:
        bm = mobilenetv2_block_masses(spec)
        out["nn_mass"] = float(sum(bm))
        out["nn_mass_per_block"] = bm
    out["params"] = int(sum(x.params for x in layers))
    out["macs"] = int(sum(x.macs for x in layers))
    out["layers"] = len([x for x in layers if x.macs > 0])
    out["bytes_weights"] = int(sum(x.bytes_weights for x in layers))
    out["bytes_activations"] = int(sum(x.bytes_in + x.bytes_out for x in layers))
    return out
