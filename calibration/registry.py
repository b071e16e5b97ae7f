"""The registry of cost models, loading saved models, and compatibility checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnflash.calibration.base import FORMAT, FORMAT_VERSION, CostModel
from nnflash.calibration.energy import EnergyModel
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.linear import LinearLatencyModel, MacsOnlyModel
from nnflash.calibration.roofline import RooflineLatencyModel

#: Every cost model, by ``kind`` (the contract test runs over this dict).
COST_MODELS: dict[str, type[CostModel]] = {
    cls.kind: cls for cls in (RooflineLatencyModel, LinearLatencyModel, MacsOnlyModel, EnergyModel)
}


def make_model(kind: str, **params: Any) -> CostModel:
    """A fresh, unfitted model of a registered ``kind``."""
    cls = COST_MODELS.get(kind)
    if cls is None:
        raise CostModelError(f"unknown cost model {kind!r} (known: {', '.join(sorted(COST_MODELS))})")
    try:
        return cls(**params)
    except TypeError as e:
        raise CostModelError(f"{kind}: bad hyper-parameters: {e}") from None


def model_from_dict(obj: Any, source: str = "cost model") -> CostModel:
    """Rebuild a fitted model from :meth:`CostModel.to_dict` output (clear errors otherwise)."""
    if not isinstance(obj, Mapping):
        raise CostModelError(f"{source}: not a cost model (expected a JSON object)")
    if obj.get("format") != FORMAT:
        raise CostModelError(f"{source}: not an nnflash cost model (format {obj.get('format')!r})")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CostModelError(
            f"{source}: cost-model format version {version!r} is not supported "
            f"(this nnflash reads versions 1..{FORMAT_VERSION}; upgrade nnflash)"
        )
    kind = obj.get("kind")
    if kind not in COST_MODELS:
        raise CostModelError(f"{source}: unknown cost-model kind {kind!r} (known: {', '.join(sorted(COST_MODELS))})")
    params = obj.get("params")
    state = obj.get("state")
    meta = obj.get("metadata")
    if not isinstance(params, Mapping) or not isinstance(state, Mapping) or not isinstance(meta, Mapping):
        raise CostModelError(f"{source}: incomplete cost model (needs params, state and metadata)")
    model = make_model(kind, **params)
    try:
        model._validate_params()
        model._set_state(state)
    except CostModelError as e:
        raise CostModelError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CostModelError(f"{source}: corrupt {kind} state ({type(e).__name__}: {e})") from None
    model.metadata_ = dict(meta)
    return model


def load_model(path: str | Path) -> CostModel:
    """Load a model saved by :meth:`CostModel.save`."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise CostModelError(f"cost model {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CostModelError(f"cost model {p}: cannot read ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CostModelError(f"cost model {p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return model_from_dict(obj, source=f"cost model {p}")


def check_compatible(
    model: CostModel, *, device: str | None = None, runtime: str | None = None, threads: int | None = None
) -> list[str]:
    """Warnings (one line each) when ``model`` was calibrated for another device, runtime or thread
    count than the one it is about to predict for; empty when it matches or nothing is known."""
    meta = getattr(model, "metadata_", {}) or {}
    out = []
    for key, want in (("device", device), ("runtime", runtime), ("threads", threads)):
        have = meta.get(key)
        if want is None:
            continue
        if have is None:
            out.append(f"cost model does not record its {key}; predicting for {key} {want!r} may be inaccurate")
        elif str(have) != str(want):
            out.append(f"cost model was calibrated for {key} {have!r}, not {want!r}: predictions may be far off")
    return out
