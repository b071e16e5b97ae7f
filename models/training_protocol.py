"""A training protocol as data: a frozen record with a short content hash, presets and TOML files.

An accuracy is keyed by (spec id, dataset, protocol hash, seed): the hash covers every field that
changes what a training does, and nothing else -- not the dataset, not the seed, not the protocol's
``name`` (a label: a TOML file that repeats the ``quick`` preset's values *is* ``quick``). It also
covers ``ENGINE_REVISION``, raised whenever the training engine (``models.training``) changes what a
protocol means, so old accuracies are never pooled with new ones.

Presets:

- ``quick`` -- for a CPU. 20,000 training images, 3 epochs of batch 128, SGD with Nesterov momentum,
  a one-cycle schedule (linear warm-up over the first 15% of steps, then linear decay to zero), no
  augmentation, fp32. On the 2-core development machine, otherwise idle, networks of the
  ``flash-fmnist`` space train at 700-2,200 images/s (median about 1,000), so quick's 60,000
  training images take about a minute, plus a few seconds to evaluate 15,000 images. A median
  network reached 0.874 and 0.863 test accuracy on Fashion-MNIST with seeds 0 and 1.
- ``standard`` -- for a GPU: the whole training split (55,000 Fashion-MNIST images), 30 epochs of
  batch 256, cosine schedule with warm-up, label smoothing 0.1, random crop and flip, bf16 autocast.

A TOML file holds the fields below at its top level; ``base = "quick"`` starts from a preset and
overrides what the file sets. Unknown keys and bad values are one-line ``ProtocolError``\\ s naming
the file and the key.

``train_size``/``val_size`` are the number of images of the dataset's training/validation split used
(omitted: all). The test split is always used whole.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from nnflash.models.errors import NnflashError

ENGINE_REVISION = 1

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "constant")
AUGMENTATIONS = ("none", "flip", "crop", "crop-flip")
PRECISIONS = ("fp32", "bf16")


class ProtocolError(NnflashError, ValueError):
    """A training protocol is malformed (unknown key, bad value, unreadable file)."""


@dataclass(frozen=True)
class TrainingProtocol:
    """How a network is trained. Every field but ``name`` enters ``protocol_hash``.

    ``lr`` is the peak learning rate; ``schedule`` shapes it over all steps after a linear warm-up
    of ``warmup_fraction`` of them (``cosine`` and ``linear`` decay to zero). ``momentum`` is SGD's
    momentum or AdamW's beta1. ``weight_decay`` applies to weights (conv, linear), not to biases or
    batch-norm parameters. ``augmentation``: ``flip`` mirrors half the images left-right, ``crop``
    shifts each image by up to H/8 pixels (zero padding). ``precision`` ``bf16`` is autocast.
    """

    name: str = "custom"
    train_size: Optional[int] = None
    val_size: Optional[int] = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.0
    label_smoothing: float = 0.0
    augmentation: str = "none"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _validate(self, "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hashed_dict(self) -> dict[str, Any]:
        """What the hash covers: every field except ``name``, and the engine revision."""
        d = self.to_dict()
        del d["name"]
        d["engine_revision"] = ENGINE_REVISION
        return d

    @property
    def protocol_hash(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON of ``hashed_dict()``."""
        text = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "") -> TrainingProtocol:
        """A protocol from a mapping (a parsed TOML file); ``base`` names a preset to start from."""
        allowed = {f.name for f in fields(cls)} | {"base"}
        for key in obj:
            if key not in allowed:
                raise ProtocolError(f"{where}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
        values = dict(obj)
        base_name = values.pop("base", None)
        if base_name is None:
            base = cls()
        elif not isinstance(base_name, str) or base_name not in PRESETS:
            raise ProtocolError(f"{where}base: must be one of {', '.join(PRESETS)}, got {json.dumps(base_name)}")
        else:
            base = PRESETS[base_name]
        values.setdefault("name", "custom")
        for key, v in values.items():
            if v == "none" and key in ("train_size", "val_size"):
                values[key] = None  # TOML has no null
        _validate_types(values, where)
        try:
            return replace(base, **values)
        except ProtocolError as e:
            raise ProtocolError(f"{where}{e}") from None


def _validate_types(values: Mapping[str, Any], where: str) -> None:
    """Types of the raw values (so that 3.0 epochs or "0.1" as a rate are errors, not coerced)."""
    kinds = {f.name: f.type for f in fields(TrainingProtocol)}
    for key, v in values.items():
        kind = str(kinds[key])
        if kind == "str":
            ok = isinstance(v, str)
            want = "a string"
        elif kind == "bool":
            ok = isinstance(v, bool)
            want = "true or false"
        elif kind == "float":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            want = "a number"
        else:  # int or Optional[int]
            ok = (isinstance(v, int) and not isinstance(v, bool)) or (v is None and "Optional" in kind)
            want = "an integer" + (' or "none"' if "Optional" in kind else "")
        if not ok:
            raise ProtocolError(f"{where}{key}: must be {want}, got {json.dumps(v)}")


def _validate(p: TrainingProtocol, where: str) -> None:
    def bad(key: str, want: str) -> ProtocolError:
        return ProtocolError(f"{where}{key}: must be {want}, got {json.dumps(getattr(p, key))}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(p.name, str) or not p.name:
        raise bad("name", "a non-empty string")
    for key in ("train_size", "val_size"):
        v = getattr(p, key)
        if v is not None and (not is_int(v) or v < 1):
            raise bad(key, "a positive integer (or omitted: the whole split)")
    for key in ("epochs", "batch_size"):
        v = getattr(p, key)
        if not is_int(v) or v < 1:
            raise bad(key, "a positive integer")
    if p.optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"one of {', '.join(OPTIMIZERS)}")
    if not is_num(p.lr) or p.lr <= 0:
        raise bad("lr", "a positive number")
    if not is_num(p.momentum) or not 0 <= p.momentum < 1:
        raise bad("momentum", "a number in [0, 1)")
    if not isinstance(p.nesterov, bool):
        raise bad("nesterov", "true or false")
    if p.nesterov and p.optimizer == "sgd" and p.momentum == 0:
        raise ProtocolError(f"{where}nesterov: needs momentum > 0 (set nesterov = false or a momentum)")
    if not is_num(p.weight_decay) or p.weight_decay < 0:
        raise bad("weight_decay", "a number >= 0")
    if p.schedule not in SCHEDULES:
        raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
    if not is_num(p.warmup_fraction) or not 0 <= p.warmup_fraction < 1:
        raise bad("warmup_fraction", "a number in [0, 1)")
    if not is_num(p.label_smoothing) or not 0 <= p.label_smoothing < 1:
        raise bad("label_smoothing", "a number in [0, 1)")
    if p.augmentation not in AUGMENTATIONS:
        raise bad("augmentation", f"one of {', '.join(AUGMENTATIONS)}")
    if p.precision not in PRECISIONS:
        raise bad("precision", f"one of {', '.join(PRECISIONS)}")
    # numbers are stored as floats so that lr = 1 and lr = 1.0 hash alike
    for key in ("lr", "momentum", "weight_decay", "warmup_fraction", "label_smoothing"):
        object.__setattr__(p, key, float(getattr(p, key)))


PRESETS: dict[str, TrainingProtocol] = {
    "quick": TrainingProtocol(
        name="quick",
        train_size=20000,
        val_size=5000,
        epochs=3,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="linear",
        warmup_fraction=0.15,
        label_smoothing=0.0,
        augmentation="none",
        precision="fp32",
    ),
    "standard": TrainingProtocol(
        name="standard",
        train_size=None,
        val_size=None,
        epochs=30,
        batch_size=256,
        optimizer="sgd",
        lr=0.2,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_fraction=0.05,
        label_smoothing=0.1,
        augmentation="crop-flip",
        precision="bf16",
    ),
}


def load_protocol_file(path: str | Path) -> TrainingProtocol:
    """A protocol from a TOML file (``name`` defaults to the file's stem)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{p}: cannot read: {e}") from None
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    try:
        obj = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProtocolError(f"{p}: not valid TOML: {e}") from None
    if "name" not in obj:
        obj["name"] = p.stem
    return TrainingProtocol.from_dict(obj, where=f"{p}: ")


def get_protocol(name_or_path: str | Path) -> TrainingProtocol:
    """A preset by name, else a TOML file by path."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    p = Path(key)
    if p.suffix.lower() == ".toml" or p.exists():
        return load_protocol_file(p)
    raise ProtocolError(f"protocol: unknown preset {key!r} (presets: {', '.join(PRESETS)}; or a .toml file)")
