"""Cost-model features of a spec, derived from its per-layer analytic counts.

Every cost model in :mod:`calibration` takes *specs* as ``X`` (spec objects, spec dicts or a spec's
layer table, see :func:`as_layer_tables`); the features below are a fixed function of the spec, so a
saved model needs nothing but the spec to predict.

Layer records
-------------
:func:`layer_records` starts from ``models.metrics.layer_table`` and groups operators into the kinds
of :data:`KINDS`: ``conv`` (regular k x k convolution), ``pointwise`` (1 x 1), ``depthwise``
(depthwise and grouped convolutions), ``linear``, ``bn`` (BatchNorm and the activation that follows
it), ``gather`` (channel selection and concatenation of long-range skips), ``pool`` and ``add``.
Bytes moved by a layer are ``weights + input + output`` (float32). For the dense and mlp families
(cells found from the layers' ``cell``, ``index`` and ``role`` fields, so a bare layer table gives the
same records) the gather record also counts what the exported graph really moves: layer ``i > 2`` first concatenates the
outputs of layers ``0..i-2`` (``w*(i-1)`` channels) into the pool it selects from, then gathers
``s_i`` channels and concatenates them after the previous output; ``ops`` counts those operators.

Records also carry the layer's place (``section``, ``cell``, ``index``, ``role``: structured fields
of ``models.metrics.Layer``, never parsed from its ``name``, which is for display), groups and output
width, so that a model can rebuild the network's structure (the roofline's simulation of the
runtime's graph does).

Feature vector
--------------
:func:`feature_names` lists, in a fixed order: for every kind its MACs (compute kinds only), bytes
and operator count; then totals (MACs, bytes, weight bytes, operators) and the network's input and
output sizes in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnflash.calibration.errors import CostModelError
from nnflash.models.metrics import Layer, layer_table
from nnflash.models.spec import parse_spec

KINDS: tuple[str, ...] = ("conv", "pointwise", "depthwise", "linear", "bn", "gather", "pool", "add")
COMPUTE_KINDS: tuple[str, ...] = ("conv", "pointwise", "depthwise", "linear")
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
_KIND_OF = {"grouped": "depthwise"}
#: Roles of the layer that gives a dense/mlp cell its output width (``regular``, ``depthwise``, mlp).
_CELL_OUTPUT_ROLES: tuple[str, ...] = ("conv", "pw2", "fc")


@dataclass(frozen=True)
class LayerRecord:
    """One operator group as the cost models see it (float32, batch 1)."""

    kind: str
    macs: float
    bytes: float
    bytes_weights: float
    ops: int
    in_ch: int
    out_ch: int
    kernel: int
    hw_in: int
    hw_out: int
    #: The layer's name in ``models.metrics.layer_table`` (``c0.l3.conv``, ``head.fc``, ...), for
    #: display only: the fields below say where the layer is.
    name: str = ""
    groups: int = 1
    #: Output width (columns); 0 when unknown.
    w_out: int = 0
    #: The layer's place, as in ``models.metrics.Layer``: ``stem``, ``body`` or ``head`` ("" when
    #: unknown), the cell and the position in it (``None`` outside the body), and its ``role``.
    section: str = ""
    cell: int | None = None
    index: int | None = None
    role: str = ""


def _cell_widths(table: Sequence[Layer]) -> dict[int, int]:
    """Output width of every dense/mlp cell: that of its first convolution or linear layer."""
    out: dict[int, int] = {}
    for layer in table:
        if layer.section == "body" and layer.cell is not None and layer.role in _CELL_OUTPUT_ROLES:
            out.setdefault(layer.cell, layer.out_ch)
    return out


def _record(layer: Layer, widths: Mapping[int, int]) -> LayerRecord:
    kind = _KIND_OF.get(layer.kind, layer.kind)
    if kind not in KIND_INDEX:
        raise CostModelError(f"features: unknown layer kind {layer.kind!r} in layer {layer.name!r}")
    nbytes = float(layer.bytes_weights + layer.bytes_in + layer.bytes_out)
    ops = 1
    c, i = layer.cell, layer.index
    if kind == "gather" and layer.role == "gather" and c is not None and c in widths and i is not None:
        w = widths[c]
        s = layer.in_ch - w
        plane = 4 * layer.h_in * layer.w_in
        pool = w * (i - 1) if i > 2 else 0  # torch.cat(outs[:i-1]) before index_select
        nbytes = float(plane * (2 * pool + 2 * s + 2 * (w + s)))
        ops = 3 if i > 2 else 2
    return LayerRecord(
        kind=kind,
        macs=float(layer.macs),
        bytes=nbytes,
        bytes_weights=float(layer.bytes_weights),
        ops=ops,
        in_ch=layer.in_ch,
        out_ch=layer.out_ch,
        kernel=layer.kernel,
        hw_in=layer.h_in * layer.w_in,
        hw_out=layer.h_out * layer.w_out,
        name=layer.name,
        groups=layer.groups,
        w_out=layer.w_out,
        section=layer.section,
        cell=layer.cell,
        index=layer.index,
        role=layer.role,
    )


def layer_records(x: Any) -> list[LayerRecord]:
    """The layer records of one spec (object, dict or JSON text) or of a layer table."""
    if isinstance(x, (list, tuple)) and all(isinstance(v, Layer) for v in x):
        if not x:
            raise CostModelError("features: empty layer table")
        table = list(x)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(v, LayerRecord) for v in x):
        return list(x)
    else:
        spec = parse_spec(x) if isinstance(x, (Mapping, str)) else x  # SpecError names the field
        try:
            table = layer_table(spec)
        except TypeError:
            raise CostModelError(
                f"X: each sample must be a spec, a spec dict or a layer table, got {type(x).__name__}"
            ) from None
    widths = _cell_widths(table)
    return [_record(v, widths) for v in table]


def as_sample_list(X: Any) -> list[Any]:
    """``X`` as a list of samples (specs, spec dicts or layer tables), refusing a single spec or a
    numeric feature matrix with a clear error."""
    if X is None or isinstance(X, (str, bytes, Mapping)) or hasattr(X, "spec_id"):
        raise CostModelError("X: must be a sequence of specs (or layer tables), not a single one")
    if isinstance(X, np.ndarray):
        raise CostModelError(
            "X: must be a sequence of specs or layer tables, not a numeric array "
            "(cost models compute their own features from specs)"
        )
    try:
        return list(X)
    except TypeError:
        raise CostModelError(f"X: must be a sequence of specs, got {type(X).__name__}") from None


def as_layer_tables(X: Any) -> list[list[LayerRecord]]:
    """``X`` (a sequence of specs, spec dicts or layer tables) as a list of layer-record lists."""
    return [layer_records(v) for v in as_sample_list(X)]


def feature_names() -> list[str]:
    names: list[str] = []
    for k in KINDS:
        if k in COMPUTE_KINDS:
            names.append(f"macs_{k}")
        names += [f"bytes_{k}", f"ops_{k}"]
    names += ["macs_total", "bytes_total", "bytes_weights", "ops_total", "input_bytes", "output_bytes"]
    return names


def feature_vector(records: Sequence[LayerRecord]) -> np.ndarray:
    """The feature vector of one layer-record list (names: :func:`feature_names`)."""
    macs = dict.fromkeys(KINDS, 0.0)
    nbytes = dict.fromkeys(KINDS, 0.0)
    ops = dict.fromkeys(KINDS, 0.0)
    for r in records:
        macs[r.kind] += r.macs
        nbytes[r.kind] += r.bytes
        ops[r.kind] += r.ops
    out: list[float] = []
    for k in KINDS:
        if k in COMPUTE_KINDS:
            out.append(macs[k])
        out += [nbytes[k], ops[k]]
    first, last = records[0], records[-1]
    in_bytes = 4.0 * first.in_ch * first.hw_in
    out += [
        sum(macs.values()),
        sum(nbytes.values()),
        sum(r.bytes_weights for r in records),
        sum(ops.values()),
        in_bytes,
        4.0 * last.out_ch * last.hw_out,
    ]
    return np.array(out, dtype=np.float64)


def features(spec: Any) -> np.ndarray:
    """The feature vector of one spec (names: :func:`feature_names`)."""
    return feature_vector(layer_records(spec))


def feature_matrix(specs: Iterable[Any]) -> np.ndarray:
    """``(n, len(feature_names()))`` features of ``specs``."""
    rows = [features(s) for s in specs]
    if not rows:
        return np.zeros((0, len(feature_names())))
    return np.stack(rows)


@dataclass(frozen=True)
class LayerBatch:
    """All layers of ``n`` samples, flattened: ``sample[j]`` is the sample layer ``j`` belongs to."""

    n: int
    sample: np.ndarray
    kind: np.ndarray
    macs: np.ndarray
    bytes: np.ndarray
    ops: np.ndarray
    in_ch: np.ndarray
    out_ch: np.ndarray
    kernel: np.ndarray
    hw_in: np.ndarray
    hw_out: np.ndarray

    def per_sample(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.sample, weights=values, minlength=self.n)


def layer_batch(tables: Sequence[Sequence[LayerRecord]]) -> LayerBatch:
    recs = [(i, r) for i, t in enumerate(tables) for r in t]
    if not recs:
        raise CostModelError("X: no layers")
    return LayerBatch(
        n=len(tables),
        sample=np.array([i for i, _ in recs], dtype=np.int64),
        kind=np.array([KIND_INDEX[r.kind] for _, r in recs], dtype=np.int64),
        macs=np.array([r.macs for _, r in recs]),
        bytes=np.array([r.bytes for _, r in recs]),
        ops=np.array([r.ops for _, r in recs], dtype=np.float64),
        in_ch=np.array([r.in_ch for _, r in recs], dtype=np.float64),
        out_ch=np.array([r.out_ch for _, r in recs], dtype=np.float64),
        kernel=np.array([r.kernel for _, r in recs], dtype=np.float64),
        hw_in=np.array([r.hw_in for _, r in recs], dtype=np.float64),
        hw_out=np.array([r.hw_out for _, r in recs], dtype=np.float64),
    )
