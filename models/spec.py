"""Architecture specs: the single description every other part of nnflash is derived from.

A spec is a frozen dataclass. Its canonical JSON (sorted keys, no whitespace) is hashed into a short
``spec_id`` that is the join key everywhere (artifact names, database rows). Metrics, the torch
module, the exported files and the cost-model features are all functions of the spec.

Families register themselves in ``FAMILIES``; a preset is a few numbers passed to a family, not a
new class.

Dense-family wiring (the NN-Mass paper's DenseNet-type network): a cell of depth ``d``, width ``w``
and skip cap ``tc`` has layers ``i = 0..d-1``; layer ``i >= 2`` receives
``s_i = min(tc, w*(i-1))`` long-range channels chosen without replacement from the outputs of
layers ``0..i-2`` of the same cell (flat index ``j*w + k`` for channel ``k`` of layer ``j``),
concatenated after the output of layer ``i-1``. The selection is drawn once from ``seed`` and stored
in the spec (``skips``), so the wiring is exact wherever the spec travels.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Union

import numpy as np

from nnflash.models.errors import SpecError

if TYPE_CHECKING:
    from nnflash.models.nb201 import Nb201Spec

# --------------------------------------------------------------------------------------------
# validation helpers: every message names the field and the problem, on one line


def _int(obj: Mapping[str, Any], key: str, where: str, *, default: Any = None, minimum: int | None = None) -> int:
    path = f"{where}{key}"
    if key not in obj:
        if default is None:
            raise SpecError(f"{path}: missing required field")
        return int(default)
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{path}: must be an integer, got {json.dumps(v)}")
    if minimum is not None and v < minimum:
        if minimum == 1:
            raise SpecError(f"{path}: must be a positive integer, got {v}")
        raise SpecError(f"{path}: must be >= {minimum}, got {v}")
    return v


def _num(obj: Mapping[str, Any], key: str, where: str, *, default: float, minimum_exclusive: float = 0.0) -> float:
    path = f"{where}{key}"
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{path}: must be a number, got {json.dumps(v)}")
    if v <= minimum_exclusive:
        raise SpecError(f"{path}: must be > {minimum_exclusive:g}, got {v}")
    return float(v)


def _choice(obj: Mapping[str, Any], key: str, where: str, choices: Sequence[str], default: str) -> str:
    v = obj.get(key, default)
    if not isinstance(v, str) or v not in choices:
        raise SpecError(f"{where}{key}: must be one of {', '.join(choices)}, got {json.dumps(v)}")
    return v


def _int_list(
    obj: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Sequence[int] | None,
    minimum: int,
    length: int | None = None,
) -> tuple[int, ...]:
    path = f"{where}{key}"
    if key not in obj:
        if default is None:
            raise SpecError(f"{path}: missing required field")
        return tuple(default)
    v = obj[key]
    if not isinstance(v, list) or not v:
        raise SpecError(f"{path}: must be a non-empty list of integers, got {json.dumps(v)}")
    if length is not None and len(v) != length:
        raise SpecError(f"{path}: must have {length} entries, got {len(v)}")
    return tuple(_int({key: x}, key, where, minimum=minimum) for x in v)


def _check_keys(obj: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise SpecError(f"{where}{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


# --------------------------------------------------------------------------------------------
# deterministic skip selection (our own hash, so the draw does not depend on numpy's RNG internals)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _stream(seed: int, *path: int) -> np.uint64:
    s = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    for p in path:
        with np.errstate(over="ignore"):
            s = _splitmix64(s + np.uint64(p))
    return s[0]


def draw_skips(seed: int, cell_index: int, depth: int, width: int, tc: int) -> tuple[tuple[int, ...], ...]:
    """Long-range channel selection of one cell: for every layer, sorted flat channel indices.

    Layer ``i`` chooses ``min(tc, width*(i-1))`` of the ``width*(i-1)`` channels of layers ``0..i-2``
    uniformly without replacement: each candidate gets a 64-bit key from a splitmix64 stream seeded
    by (seed, cell, layer) and the smallest keys win.
    """
    out: list[tuple[int, ...]] = [() for _ in range(min(depth, 2))]
    for i in range(2, depth):
        n = width * (i - 1)
        s = min(tc, n)
        if s == 0:
            out.append(())
            continue
        if s == n:
            out.append(tuple(range(n)))
            continue
        base = _stream(seed, cell_index, i)
        with np.errstate(over="ignore"):
            keys = _splitmix64(np.arange(n, dtype=np.uint64) + base)
        chosen = np.sort(np.argsort(keys, kind="stable")[:s])
        out.append(tuple(int(x) for x in chosen))
    return tuple(out)


def skip_count(depth: int, width: int, tc: int) -> int:
    """Total long-range channels of a cell: sum over i=2..d-1 of min(tc, w*(i-1))."""
    return sum(min(tc, width * (i - 1)) for i in range(2, depth))


# --------------------------------------------------------------------------------------------
# the spec base


class Spec:
    """Behaviour shared by every family's frozen dataclass."""

    family: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every family overrides
        raise NotImplementedError

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def spec_id(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON."""
        cached = self.__dict__.get("_spec_id")
        if cached is None:
            cached = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]
            object.__setattr__(self, "_spec_id", cached)
        return cached

    def to_json_line(self) -> str:
        """The spec as one JSON line, with its id (checked again when read back)."""
        d = {"spec_id": self.spec_id, **self.to_dict()}
        return json.dumps(d, separators=(",", ":"))


def _input_shape(obj: Mapping[str, Any], where: str, default: Sequence[int], ndim: int) -> tuple[int, ...]:
    return _int_list(obj, "input_shape", where, default=default, minimum=1, length=ndim)


# ---------------------------------------------------------------------------------- dense / mlp


@dataclass(frozen=True)
class Cell:
    depth: int
    width: int
    tc: int

    def to_dict(self) -> dict[str, int]:
        return {"depth": self.depth, "width": self.width, "tc": self.tc}


def _parse_cells(obj: Mapping[str, Any], where: str) -> tuple[Cell, ...]:
    cells = obj.get("cells")
    if "cells" not in obj:
        raise SpecError(f"{where}cells: missing required field")
    if not isinstance(cells, list) or not cells:
        raise SpecError(f"{where}cells: must be a non-empty list of cells, got {json.dumps(cells)}")
    out = []
    for k, c in enumerate(cells):
        w = f"{where}cells[{k}]."
        if not isinstance(c, dict):
            raise SpecError(f"{w[:-1]}: must be an object with depth, width, tc, got {json.dumps(c)}")
        _check_keys(c, ("depth", "width", "tc"), w)
        out.append(Cell(_int(c, "depth", w, minimum=1), _int(c, "width", w, minimum=1), _int(c, "tc", w, minimum=0)))
    return tuple(out)


def _parse_skips(obj: Mapping[str, Any], cells: tuple[Cell, ...], seed: int, where: str) -> tuple:
    if "skips" not in obj or obj["skips"] is None:
        return tuple(draw_skips(seed, c_i, c.depth, c.width, c.tc) for c_i, c in enumerate(cells))
    raw = obj["skips"]
    if not isinstance(raw, list) or len(raw) != len(cells):
        raise SpecError(f"{where}skips: must be a list with one entry per cell ({len(cells)})")
    out = []
    for c_i, (cell, layers) in enumerate(zip(cells, raw)):
        if not isinstance(layers, list) or len(layers) != cell.depth:
            raise SpecError(f"{where}skips[{c_i}]: must list the {cell.depth} layers of cell {c_i}")
        cell_out = []
        for i, sel in enumerate(layers):
            path = f"{where}skips[{c_i}][{i}]"
            n = cell.width * (i - 1) if i >= 2 else 0
            want = min(cell.tc, n)
            if not isinstance(sel, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in sel):
                raise SpecError(f"{path}: must be a list of integers")
            if len(sel) != want:
                raise SpecError(
                    f"{path}: layer {i} must receive min(tc, width*(i-1)) = {want} channels, got {len(sel)}"
                )
            if len(set(sel)) != len(sel) or any(x < 0 or x >= n for x in sel):
                raise SpecError(f"{path}: channel indices must be distinct and in [0, {n})")
            cell_out.append(tuple(sorted(sel)))
        out.append(tuple(cell_out))
    return tuple(out)


@dataclass(frozen=True)
class DenseSpec(Spec):
    """The NN-Mass paper's DenseNet-type CNN (concatenation skips inside each cell)."""

    family: ClassVar[str] = "dense"
    cells: tuple[Cell, ...]
    conv: str = "regular"
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    seed: int = 0
    skips: tuple[tuple[tuple[int, ...], ...], ...] = field(default=(), repr=False)

    CONVS: ClassVar[tuple[str, ...]] = ("regular", "depthwise")

    def __post_init__(self) -> None:
        if not self.skips:
            object.__setattr__(
                self, "skips", tuple(draw_skips(self.seed, i, c.depth, c.width, c.tc) for i, c in enumerate(self.cells))
            )

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> DenseSpec:
        _check_keys(obj, ("family", "spec_id", "cells", "conv", "input_shape", "num_classes", "seed", "skips"), "")
        cells = _parse_cells(obj, "")
        seed = _int(obj, "seed", "", default=0, minimum=0)
        return cls(
            cells=cells,
            conv=_choice(obj, "conv", "", cls.CONVS, "regular"),
            input_shape=_input_shape(obj, "", (3, 32, 32), 3),  # type: ignore[arg-type]
            num_classes=_int(obj, "num_classes", "", default=10, minimum=1),
            seed=seed,
            skips=_parse_skips(obj, cells, seed, ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "cells": [c.to_dict() for c in self.cells],
            "conv": self.conv,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "seed": self.seed,
            "skips": [[list(s) for s in layers] for layers in self.skips],
        }


@dataclass(frozen=True)
class MlpSpec(Spec):
    """A multilayer perceptron with concatenation skips (the paper's synthetic experiments).

    Each cell is a stack of ``depth`` Linear+activation layers of ``width`` units wired like a
    dense cell; a final Linear classifier (not counted in ``depth``) maps to ``num_classes``.
    """

    family: ClassVar[str] = "mlp"
    cells: tuple[Cell, ...]
    input_shape: tuple[int] = (784,)
    num_classes: int = 10
    activation: str = "relu"
    seed: int = 0
    skips: tuple[tuple[tuple[int, ...], ...], ...] = field(default=(), repr=False)

    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("relu", "tanh")

    def __post_init__(self) -> None:
        if not self.skips:
            object.__setattr__(
                self, "skips", tuple(draw_skips(self.seed, i, c.depth, c.width, c.tc) for i, c in enumerate(self.cells))
            )

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> MlpSpec:
        _check_keys(
            obj, ("family", "spec_id", "cells", "input_shape", "num_classes", "activation", "seed", "skips"), ""
        )
        cells = _parse_cells(obj, "")
        seed = _int(obj, "seed", "", default=0, minimum=0)
        return cls(
            cells=cells,
            input_shape=_input_shape(obj, "", (784,), 1),  # type: ignore[arg-type]
            num_classes=_int(obj, "num_classes", "", default=10, minimum=1),
            activation=_choice(obj, "activation", "", cls.ACTIVATIONS, "relu"),
            seed=seed,
            skips=_parse_skips(obj, cells, seed, ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "cells": [c.to_dict() for c in self.cells],
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "activation": self.activation,
            "seed": self.seed,
            "skips": [[list(s) for s in layers] for layers in self.skips],
        }


# ----------------------------------------------------------------------------- addition families


@dataclass(frozen=True)
class ResNetSpec(Spec):
    """torchvision-style ResNet / Wide-ResNet / ResNeXt (addition skips).

    ``planes`` are the stage widths before ``width_mult`` scaling; the Bottleneck inner width is
    ``int(planes * width_per_group / 64) * groups`` as in torchvision.
    """

    family: ClassVar[str] = "resnet"
    block: str = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    groups: int = 1
    width_per_group: int = 64
    planes: tuple[int, ...] = (64, 128, 256, 512)
    width_mult: float = 1.0
    input_shape: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000

    BLOCKS: ClassVar[tuple[str, ...]] = ("basic", "bottleneck")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ResNetSpec:
        keys = (
            "family",
            "spec_id",
            "block",
            "layers",
            "groups",
            "width_per_group",
            "planes",
            "width_mult",
            "input_shape",
            "num_classes",
        )
        _check_keys(obj, keys, "")
        block = _choice(obj, "block", "", cls.BLOCKS, "basic")
        layers = _int_list(obj, "layers", "", default=(2, 2, 2, 2), minimum=1)
        planes = _int_list(
            obj,
            "planes",
            "",
            default=(64, 128, 256, 512)[: len(layers)] if len(layers) <= 4 else None,
            minimum=1,
            length=len(layers),
        )
        groups = _int(obj, "groups", "", default=1, minimum=1)
        wpg = _int(obj, "width_per_group", "", default=64, minimum=1)
        if block == "basic" and (groups != 1 or wpg != 64):
            raise SpecError("groups: BasicBlock supports only groups=1 and width_per_group=64")
        return cls(
            block=block,
            layers=layers,
            groups=groups,
            width_per_group=wpg,
            planes=planes,
            width_mult=_num(obj, "width_mult", "", default=1.0),
            input_shape=_input_shape(obj, "", (3, 224, 224), 3),  # type: ignore[arg-type]
            num_classes=_int(obj, "num_classes", "", default=1000, minimum=1),
        )

    def stage_planes(self) -> tuple[int, ...]:
        return tuple(max(1, int(round(p * self.width_mult))) for p in self.planes)

    @property
    def stem_width(self) -> int:
        return max(1, int(round(64 * self.width_mult)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "block": self.block,
            "layers": list(self.layers),
            "groups": self.groups,
            "width_per_group": self.width_per_group,
            "planes": list(self.planes),
            "width_mult": self.width_mult,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


MOBILENETV2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class MobileNetV2Spec(Spec):
    """torchvision's MobileNetV2: inverted residual stages ``(t, c, n, s)`` and a width multiplier."""

    family: ClassVar[str] = "mobilenetv2"
    width_mult: float = 1.0
    setting: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_SETTING
    round_nearest: int = 8
    last_channel: int = 1280
    input_shape: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> MobileNetV2Spec:
        keys = (
            "family",
            "spec_id",
            "width_mult",
            "setting",
            "round_nearest",
            "last_channel",
            "input_shape",
            "num_classes",
        )
        _check_keys(obj, keys, "")
        setting = MOBILENETV2_SETTING
        if "setting" in obj:
            raw = obj["setting"]
            if not isinstance(raw, list) or not raw:
                raise SpecError("setting: must be a non-empty list of [t, c, n, s] stages")
            rows: list[tuple[int, int, int, int]] = []
            for k, row in enumerate(raw):
                if not isinstance(row, list) or len(row) != 4:
                    raise SpecError(f"setting[{k}]: must be [t, c, n, s], got {json.dumps(row)}")
                t, c, n, st = (_int({"v": x}, "v", f"setting[{k}].", minimum=1) for x in row)
                rows.append((t, c, n, st))
            setting = tuple(rows)
        return cls(
            width_mult=_num(obj, "width_mult", "", default=1.0),
            setting=setting,
            round_nearest=_int(obj, "round_nearest", "", default=8, minimum=1),
            last_channel=_int(obj, "last_channel", "", default=1280, minimum=1),
            input_shape=_input_shape(obj, "", (3, 224, 224), 3),  # type: ignore[arg-type]
            num_classes=_int(obj, "num_classes", "", default=1000, minimum=1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "width_mult": self.width_mult,
            "setting": [list(r) for r in self.setting],
            "round_nearest": self.round_nearest,
            "last_channel": self.last_channel,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """Every inverted-residual block as ``(inp, oup, stride, expand_ratio)``."""
        inp = make_divisible(32 * self.width_mult, self.round_nearest)
        out = []
        for t, c, n, s in self.setting:
            oup = make_divisible(c * self.width_mult, self.round_nearest)
            for k in range(n):
                out.append((inp, oup, s if k == 0 else 1, t))
                inp = oup
        return out

    @property
    def stem_width(self) -> int:
        return make_divisible(32 * self.width_mult, self.round_nearest)

    @property
    def head_width(self) -> int:
        return make_divisible(self.last_channel * max(1.0, self.width_mult), self.round_nearest)


# ------------------------------------------------------------------------------ plain (vgg) family


@dataclass(frozen=True)
class VggLayer:
    """One entry of a plain network's feature extractor or classifier.

    ``conv``: a ``kernel x kernel`` convolution (stride 1, padding ``kernel // 2``) to ``out``
    channels, followed by ReLU; ``pool``: a 2x2 max pool with stride 2; ``linear``: a hidden fully
    connected layer of ``out`` units followed by ReLU (the input is flattened before the first).
    """

    type: str
    out: int = 0
    kernel: int = 3

    TYPES: ClassVar[tuple[str, ...]] = ("conv", "pool", "linear")

    def to_dict(self) -> dict[str, Any]:
        if self.type == "conv":
            return {"type": "conv", "out": self.out, "kernel": self.kernel}
        if self.type == "linear":
            return {"type": "linear", "out": self.out}
        return {"type": "pool"}


@dataclass(frozen=True)
class VggSpec(Spec):
    """A plain VGG-style network: convolutions, pooling and linear layers listed as data (no skip
    connections, so NN-Mass 0), then a linear classifier to ``num_classes`` (not listed).

    Convolutions and hidden linear layers are followed by ReLU (and BatchNorm after convolutions
    when ``batch_norm``); ``bias`` gives every convolution and linear layer a bias. NeuroSim's
    VGG-8 (preset ``vgg8_cifar``) has neither.
    """

    family: ClassVar[str] = "vgg"
    layers: tuple[VggLayer, ...]
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    batch_norm: bool = False
    bias: bool = False

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> VggSpec:
        _check_keys(obj, ("family", "spec_id", "layers", "input_shape", "num_classes", "batch_norm", "bias"), "")
        if "layers" not in obj:
            raise SpecError("layers: missing required field")
        raw = obj["layers"]
        if not isinstance(raw, list) or not raw:
            raise SpecError(f"layers: must be a non-empty list of layers, got {json.dumps(raw)}")
        input_shape = _input_shape(obj, "", (3, 32, 32), 3)
        c, h, w = input_shape
        layers: list[VggLayer] = []
        flat = False
        for k, entry in enumerate(raw):
            where = f"layers[{k}]."
            if not isinstance(entry, dict):
                raise SpecError(f"layers[{k}]: must be an object with a type, got {json.dumps(entry)}")
            kind = _choice(entry, "type", where, VggLayer.TYPES, "")
            if kind == "conv":
                _check_keys(entry, ("type", "out", "kernel"), where)
                if flat:
                    raise SpecError(f"layers[{k}]: a convolution cannot follow a linear layer")
                kernel = _int(entry, "kernel", where, default=3, minimum=1)
                if kernel % 2 == 0:
                    raise SpecError(f"{where}kernel: must be odd (padding kernel // 2 keeps the size), got {kernel}")
                layers.append(VggLayer("conv", _int(entry, "out", where, minimum=1), kernel))
            elif kind == "pool":
                _check_keys(entry, ("type",), where)
                if flat:
                    raise SpecError(f"layers[{k}]: pooling cannot follow a linear layer")
                if h < 2 or w < 2:
                    raise SpecError(f"layers[{k}]: nothing left to pool: the feature map is {h}x{w}")
                h, w = h // 2, w // 2
                layers.append(VggLayer("pool", 0, 2))
            else:
                _check_keys(entry, ("type", "out"), where)
                flat = True
                layers.append(VggLayer("linear", _int(entry, "out", where, minimum=1), 1))
        for key in ("batch_norm", "bias"):
            if key in obj and not isinstance(obj[key], bool):
                raise SpecError(f"{key}: must be true or false, got {json.dumps(obj[key])}")
        return cls(
            layers=tuple(layers),
            input_shape=input_shape,  # type: ignore[arg-type]
            num_classes=_int(obj, "num_classes", "", default=10, minimum=1),
            batch_norm=bool(obj.get("batch_norm", False)),
            bias=bool(obj.get("bias", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "layers": [x.to_dict() for x in self.layers],
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "batch_norm": self.batch_norm,
            "bias": self.bias,
        }


# ---------------------------------------------------------------------------------- registry

AnySpec = Union[DenseSpec, MlpSpec, ResNetSpec, MobileNetV2Spec, VggSpec, "Nb201Spec"]

FAMILIES: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "dense": DenseSpec.from_dict,
    "mlp": MlpSpec.from_dict,
    "resnet": ResNetSpec.from_dict,
    "mobilenetv2": MobileNetV2Spec.from_dict,
    "vgg": VggSpec.from_dict,
}

PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": {"family": "resnet", "block": "basic", "layers": [2, 2, 2, 2]},
    "resnet34": {"family": "resnet", "block": "basic", "layers": [3, 4, 6, 3]},
    "resnet50": {"family": "resnet", "block": "bottleneck", "layers": [3, 4, 6, 3]},
    "resnet101": {"family": "resnet", "block": "bottleneck", "layers": [3, 4, 23, 3]},
    "wide_resnet50_2": {"family": "resnet", "block": "bottleneck", "layers": [3, 4, 6, 3], "width_per_group": 128},
    "resnext50_32x4d": {
        "family": "resnet",
        "block": "bottleneck",
        "layers": [3, 4, 6, 3],
        "groups": 32,
        "width_per_group": 4,
    },
    "mobilenet_v2": {"family": "mobilenetv2"},
    # the NN-Mass paper's reference DenseNet-type network (CIFAR-10)
    "nnmass_reference": {
        "family": "dense",
        "conv": "regular",
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "seed": 2,
        "cells": [
            {"depth": 13, "width": 32, "tc": 40},
            {"depth": 13, "width": 64, "tc": 80},
            {"depth": 13, "width": 128, "tc": 125},
        ],
    },
    # DNN+NeuroSim V1.3's VGG-8 for CIFAR-10 (3x3 convolutions, no bias, no BatchNorm)
    "vgg8_cifar": {
        "family": "vgg",
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "out": 128},
            {"type": "conv", "out": 128},
            {"type": "pool"},
            {"type": "conv", "out": 256},
            {"type": "conv", "out": 256},
            {"type": "pool"},
            {"type": "conv", "out": 512},
            {"type": "conv", "out": 512},
            {"type": "pool"},
            {"type": "linear", "out": 1024},
        ],
    },
}


def parse_spec(obj: Mapping[str, Any] | str) -> AnySpec:
    """Validate a spec given as a dict or a JSON string; raises ``SpecError`` naming the field."""
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as e:
            raise SpecError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, a nesting too deep
            raise SpecError(f"malformed JSON: {e}") from None
    if not isinstance(obj, Mapping):
        raise SpecError(f"spec must be a JSON object, got {type(obj).__name__}")
    fam = obj.get("family")
    if fam is None:
        raise SpecError(f"family: missing required field (known: {', '.join(sorted(FAMILIES))})")
    if not isinstance(fam, str) or fam not in FAMILIES:
        raise SpecError(f"family: unknown family {json.dumps(fam)} (known: {', '.join(sorted(FAMILIES))})")
    spec = FAMILIES[fam](obj)
    claimed = obj.get("spec_id")
    if claimed is not None and claimed != spec.spec_id:
        raise SpecError(f"spec_id: {json.dumps(claimed)} does not match the spec's content ({spec.spec_id})")
    return spec


def preset(name: str, width_mult: float | None = None) -> AnySpec:
    if name not in PRESETS:
        raise SpecError(f"preset: unknown preset {json.dumps(name)} (known: {', '.join(sorted(PRESETS))})")
    obj = dict(PRESETS[name])
    if width_mult is not None:
        if obj["family"] not in ("resnet", "mobilenetv2"):
            raise SpecError(f"width_mult: preset {name} has no width multiplier")
        obj["width_mult"] = width_mult
    return parse_spec(obj)


def load_spec_file(path: str | Path) -> AnySpec:
    """Read one spec from a JSON file (or a one-line JSONL file)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, expected a JSON spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot read: {e}") from None
    try:
        return parse_spec(text)
    except SpecError as e:
        raise SpecError(f"{p}: {e}") from None


def spec_of_line(obj: Mapping[str, Any] | str) -> AnySpec:
    """The spec of one JSON line: a spec object, or a design written by ``nnflash search`` (an
    object holding the spec under ``"spec"``, with its ``spec_id`` beside it, which must match)."""
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as e:
            raise SpecError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, a nesting too deep
            raise SpecError(f"malformed JSON: {e}") from None
    if isinstance(obj, Mapping) and "family" not in obj and "spec" in obj:
        inner = obj["spec"]
        if not isinstance(inner, Mapping):
            raise SpecError(f"spec: a design's spec must be a JSON object, got {type(inner).__name__}")
        spec = parse_spec(inner)
        claimed = obj.get("spec_id")
        if claimed is not None and claimed != spec.spec_id:
            raise SpecError(f"spec_id: {json.dumps(claimed)} does not match the design's spec ({spec.spec_id})")
        return spec
    return parse_spec(obj)


def load_specs_jsonl(path: str | Path) -> list[AnySpec]:
    """Read a JSON-lines file of specs (blank lines ignored); errors name the line. A line may also
    be a design written by ``nnflash search`` (see :func:`spec_of_line`): its ``spec`` is taken."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot read: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(spec_of_line(line))
        except SpecError as e:
            raise SpecError(f"{p}:{n}: {e}") from None
    if not out:
        raise SpecError(f"{p}: no specs in file")
    return out


# the nb201 family registers itself in FAMILIES (models/nb201.py imports this module)
import nnflash.models.nb201  # noqa: E402, F401
