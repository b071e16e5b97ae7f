"""The ``nb201`` family: a NAS-Bench-201 cell in NAS-Bench-201's CIFAR skeleton.

The cell
--------
A NAS-Bench-201 cell is a DAG of four nodes (0 = the cell's input, 3 = its output) with an operation
on each of the six edges ``j -> i`` (``j < i``); node ``i`` is the sum of its incoming edges. The
architecture string lists, node by node, the operation of every incoming edge as ``op~j``:

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

Operations (:data:`OPS`): ``none`` (zero), ``skip_connect`` (identity), ``nor_conv_1x1`` and
``nor_conv_3x3`` (ReLU -> conv -> BatchNorm), ``avg_pool_3x3`` (stride 1, padding 1, padding not
counted). Edges are numbered in the string's order (:data:`EDGES`): ``1<-0, 2<-0, 2<-1, 3<-0,
3<-1, 3<-2``. 5^6 = 15,625 strings; isomorphic cells are **not** merged (every string is its own
spec), as in NAS-Bench-201's own indexing.

The effective network
---------------------
An operation whose source node cannot be reached from node 0 (through non-``none`` edges), or whose
target node never reaches node 3, does no work the output depends on: its source is a constant
(zero, or at most a per-channel offset from a BatchNorm shift), or its result is never used. Such
edges are *dead*; the spec keeps them (the string is the identity), but the metrics, the torch
module, the exported files and the cost-model features describe the *effective* network, where a
dead edge is ``none``. A cell with no live path from node 0 to node 3 (341 of the 15,625 strings)
makes the whole network's output independent of its input: the effective network is then its
constant logits (a learnable vector of ``num_classes`` values; see ``models.builder``).

The skeleton (NAS-Bench-201's CIFAR network, :class:`Nb201Spec` fields in brackets): a 3x3 stem
convolution to ``C`` [``channels``, 16] channels with BatchNorm; three stages of ``N``
[``cells_per_stage``, 5] cells at ``C``, ``2C`` and ``4C`` channels, joined by a stride-2 ResNet
basic block (ReLU-conv3x3/2-BN, ReLU-conv3x3-BN, plus a 2x2 average pool and 1x1 convolution on the
shortcut); then BatchNorm, ReLU, global average pooling and a linear classifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from nnflash.models.errors import SpecError
from nnflash.models.spec import FAMILIES, PRESETS, Spec, _check_keys, _input_shape, _int

#: The operations of the NAS-Bench-201 topology space.
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The six edges as ``(target, source)``, in the architecture string's order.
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
#: Operations with weights (the cell's layers).
CONV_OPS: dict[str, int] = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
#: Edges that skip at least one node (``j <= i - 2``): the cell's long-range links.
LONG_RANGE: tuple[int, ...] = tuple(e for e, (i, j) in enumerate(EDGES) if i - j >= 2)


def parse_arch(text: str) -> tuple[str, ...]:
    """The six operations of an architecture string, in :data:`EDGES` order; ``SpecError`` names
    what is wrong (unknown operation, wrong source node, wrong number of nodes or edges)."""
    if not isinstance(text, str):
        raise SpecError(f"arch: must be a NAS-Bench-201 architecture string, got {json.dumps(text)}")
    nodes = text.strip().split("+")
    if len(nodes) != 3:
        raise SpecError(f"arch: expected 3 nodes separated by '+', got {len(nodes)} in {text!r}")
    ops: list[str] = []
    for i, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise SpecError(f"arch: node {i} must be written |op~j|...|, got {node!r}")
        items = node[1:-1].split("|")
        if len(items) != i:
            raise SpecError(f"arch: node {i} must have {i} incoming edge(s), got {len(items)} in {node!r}")
        for j, item in enumerate(items):
            op, sep, src = item.partition("~")
            if not sep or src != str(j):
                raise SpecError(f"arch: edge {j + 1} of node {i} must be written op~{j}, got {item!r}")
            if op not in OPS:
                raise SpecError(f"arch: unknown operation {op!r} on edge {j}->{i} (known: {', '.join(OPS)})")
            ops.append(op)
    return tuple(ops)


def arch_string(ops: Sequence[str]) -> str:
    """The canonical architecture string of six operations (inverse of :func:`parse_arch`)."""
    if len(ops) != len(EDGES):
        raise SpecError(f"arch: a cell has {len(EDGES)} edges, got {len(ops)} operations")
    parts, k = [], 0
    for i in (1, 2, 3):
        parts.append("|" + "|".join(f"{ops[k + j]}~{j}" for j in range(i)) + "|")
        k += i
    return "+".join(parts)


def arch_from_index(index: int) -> tuple[str, ...]:
    """The operations of configuration ``index`` (0 .. 5^6 - 1) in nnflash's enumeration order:
    edge 0 varies slowest, operations in :data:`OPS` order (not NAS-Bench-201's own index)."""
    if not 0 <= index < len(OPS) ** len(EDGES):
        raise SpecError(f"index: must be in [0, {len(OPS) ** len(EDGES)}), got {index}")
    out = []
    for _ in EDGES:
        index, r = divmod(index, len(OPS))
        out.append(OPS[r])
    return tuple(reversed(out))


@dataclass(frozen=True)
class CellGraph:
    """The effective cell: which edges are live, and what that leaves."""

    ops: tuple[str, ...]
    live: tuple[bool, ...]

    @property
    def has_path(self) -> bool:
        """Whether node 3 depends on node 0 (else the network computes a constant)."""
        return any(self.live[e] for e, (i, _) in enumerate(EDGES) if i == 3)

    def live_ops(self) -> tuple[str, ...]:
        """The operations of the effective cell (dead edges as ``none``)."""
        return tuple(op if ok else "none" for op, ok in zip(self.ops, self.live))

    def live_nodes(self) -> tuple[int, ...]:
        """Nodes on a live path from node 0 to node 3 (empty without such a path)."""
        if not self.has_path:
            return ()
        nodes = {0, 3}
        for e, (i, j) in enumerate(EDGES):
            if self.live[e]:
                nodes.update((i, j))
        return tuple(sorted(nodes))

    def in_degree(self, node: int) -> int:
        return sum(1 for e, (i, _) in enumerate(EDGES) if i == node and self.live[e])

    def count(self, op: str) -> int:
        return sum(1 for o, ok in zip(self.ops, self.live) if ok and o == op)


def cell_graph(ops: Sequence[str]) -> CellGraph:
    """Mark the live edges of a cell: the source is reachable from node 0 and the target reaches
    node 3, both through non-``none`` edges."""
    ops = tuple(ops)
    active = [op != "none" for op in ops]
    from0 = {0}
    for e, (i, j) in enumerate(EDGES):  # EDGES is in topological order of targets
        if active[e] and j in from0:
            from0.add(i)
    to3 = {3}
    for e in reversed(range(len(EDGES))):
        i, j = EDGES[e]
        if active[e] and i in to3:
            to3.add(j)
    live = tuple(active[e] and j in from0 and i in to3 for e, (i, j) in enumerate(EDGES))
    return CellGraph(ops, live)


# ------------------------------------------------------------------------------ topology metrics


def cell_nn_mass(graph: CellGraph, width: int) -> float:
    """NN-Mass of one cell of ``width`` channels (ours, see :mod:`docs/nb201.md`).

    The NN-Mass paper's addition-type formulas (ResNet's ``inplanes + planes``, the Bottleneck's and
    MobileNetV2's ``(inp + 2*hidden) * inp / (2*inp + hidden)``) are all the DenseNet rule
    ``density * volume`` applied to a block whose nodes are its input and its intermediate outputs:
    node ``p >= 2`` (in order) can receive long-range links from nodes ``0..p-2``, the density is
    the channels those links bring over the channels they could bring, and the volume is the width
    summed over the nodes that feed a later one. In a cell every node has ``width`` channels;
    applied to the live nodes of the effective cell, with a live edge between non-consecutive live
    nodes as a long-range link, ``density = links / possible`` and ``volume = width * (nodes - 1)``.
    With all four nodes live this is ``width * (live long-range edges)``. 0 without a path.
    """
    nodes = graph.live_nodes()
    if len(nodes) < 3:
        return 0.0
    pos = {n: p for p, n in enumerate(nodes)}
    possible = sum(p - 1 for p in range(2, len(nodes)))
    links = sum(1 for e, (i, j) in enumerate(EDGES) if graph.live[e] and pos.get(i, -9) - pos.get(j, -9) >= 2)
    return width * (len(nodes) - 1) * links / possible


def cell_nn_degree(graph: CellGraph, width: int) -> float:
    """NN-Degree of one cell (ours, after the dense family's ``w + (1/d) * sum_i s_i``).

    The cell's layers are its live convolutions (``d`` of them); a layer on edge ``j -> i`` sees
    node ``j``, the sum of ``k_j`` live edges (1 for the cell's input): ``width`` channels from the
    previous node plus ``(k_j - 1) * width`` merged in from elsewhere. The degree is ``width`` plus
    the average of those extra channels over the layers: ``width * (1 + mean_l (k_{j_l} - 1))``;
    ``width`` for a cell without convolutions, 0 without a path.
    """
    if not graph.has_path:
        return 0.0
    extra = [
        max(graph.in_degree(j), 1) - 1 if j > 0 else 0
        for e, (_, j) in enumerate(EDGES)
        if graph.live[e] and graph.ops[e] in CONV_OPS
    ]
    return float(width * (1 + (sum(extra) / len(extra) if extra else 0.0)))


# ------------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class Nb201Spec(Spec):
    """A NAS-Bench-201 architecture in the NAS-Bench-201 CIFAR skeleton (module docstring)."""

    family: ClassVar[str] = "nb201"
    arch: str
    channels: int = 16
    cells_per_stage: int = 5
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", arch_string(parse_arch(self.arch)))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Nb201Spec:
        _check_keys(obj, ("family", "spec_id", "arch", "channels", "cells_per_stage", "input_shape", "num_classes"), "")
        if "arch" not in obj:
            raise SpecError("arch: missing required field (a NAS-Bench-201 architecture string)")
        return cls(
            arch=arch_string(parse_arch(obj["arch"])),
            channels=_int(obj, "channels", "", default=16, minimum=1),
            cells_per_stage=_int(obj, "cells_per_stage", "", default=5, minimum=1),
            input_shape=_input_shape(obj, "", (3, 32, 32), 3),  # type: ignore[arg-type]
            num_classes=_int(obj, "num_classes", "", default=10, minimum=1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "arch": self.arch,
            "channels": self.channels,
            "cells_per_stage": self.cells_per_stage,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    @property
    def ops(self) -> tuple[str, ...]:
        return parse_arch(self.arch)

    @property
    def graph(self) -> CellGraph:
        return cell_graph(self.ops)

    def stage_widths(self) -> tuple[int, int, int]:
        c = self.channels
        return (c, 2 * c, 4 * c)


FAMILIES["nb201"] = Nb201Spec.from_dict
# NAS-Bench-201's ResNet-like cell (two 3x3 convolutions in a row, the input added to the output)
PRESETS["nb201_resnet"] = {
    "family": "nb201",
    "arch": "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|",
}
