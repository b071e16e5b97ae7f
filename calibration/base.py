"""The cost-model base class (scikit-learn's estimator conventions, JSON persistence) and the
registry of cost models.

Conventions (checked for every registered model by ``tests/unit/test_cal_contract.py``):

- ``__init__`` stores hyper-parameters only, under their own names (``get_params``/``set_params``);
- ``fit(X, y)`` validates its input and returns ``self``; everything it learns is stored in
  attributes whose names end in ``_``;
- ``predict(X)`` on an unfitted model raises :class:`~calibration.errors.CostModelError`;
- ``score(X, y)`` returns the project's metrics dict (:func:`nnflash.calibration.crossval.report_metrics`).

``X`` is always a sequence of *specs* (spec objects, spec dicts, or layer tables from
``models.metrics.layer_table``); every model computes its own features from them
(:mod:`nnflash.calibration.features`). ``y`` is the measured latency in ms (``energy_mj`` for the energy
model).

Saved models are JSON (never pickle) so a model saved today loads in a later version::

    {"format": "nnflash-cost-model", "format_version": 1, "kind": "roofline",
     "params": {...hyper-parameters...}, "state": {...learned values...},
     "metadata": {"device": ..., "device_facts": ..., "runtime": ..., "threads": ...,
                  "training_spec_ids": [...], "n_samples": ..., "nnflash_version": ...,
                  "fit_date": ..., "cv": {...metrics...}}}

Registry (the timm way): a cost model is known because its class is defined with
:func:`register_cost_model`, not because a list elsewhere names it::

    @register_cost_model
    class MyModel(CostModel):
        kind = "mine"

:data:`COST_MODELS` maps every ``kind`` to its class (the contract test runs over it);
:func:`make_model` builds one by kind, :func:`model_from_dict` / :func:`load_model` read saved ones.
The registry is complete once :mod:`nnflash.calibration` is imported, which imports every model.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import LayerRecord, as_layer_tables, as_sample_list
from nnflash_agent.fileio import atomic_write_text

FORMAT = "nnflash-cost-model"
FORMAT_VERSION = 1


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnflash")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _spec_id(x: Any) -> str | None:
    sid = getattr(x, "spec_id", None)
    if sid is None and isinstance(x, Mapping):
        try:
            from nnflash.models.spec import parse_spec

            sid = parse_spec(x).spec_id
        except Exception:
            sid = None
    return str(sid) if sid is not None else None


def check_target(y: Any, n: int, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D float array of ``n`` finite positive values, or a clear CostModelError."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise CostModelError(f"{name}: must be an array of numbers") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise CostModelError(f"{name}: must be 1-D (one value per spec), got shape {arr.shape}")
    if len(arr) != n:
        raise CostModelError(f"{name}: {len(arr)} values for {n} specs in X")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise CostModelError(f"{name}: must be finite, got {arr[bad[0]]} at index {bad[0]}")
    bad = np.flatnonzero(arr <= 0)
    if len(bad):
        raise CostModelError(f"{name}: must be positive, got {arr[bad[0]]:g} at index {bad[0]}")
    return arr


class CostModel:
    """Base class of every cost model (see the module docstring for the conventions)."""

    kind: ClassVar[str] = ""
    #: What ``predict`` returns.
    target: ClassVar[str] = "latency_ms"
    #: Fewest measured models ``fit`` accepts.
    min_samples: ClassVar[int] = 3
    #: Keyword arrays ``fit`` needs besides ``X`` and ``y`` (one value per spec).
    fit_requires: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ hyper-parameters

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> CostModel:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise CostModelError(
                    f"{self.kind}: unknown hyper-parameter {key!r} (known: {', '.join(sorted(valid))})"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ fit / predict

    def _validate_params(self) -> None:
        """Raise CostModelError for hyper-parameters out of range (subclasses extend)."""

    def fit(self, X: Sequence[Any], y: Any, **fit_params: Any) -> CostModel:
        """Fit on specs ``X`` and measured ``y``; returns ``self``."""
        self._validate_params()
        items = as_sample_list(X)
        tables = as_layer_tables(items)
        yy = check_target(y, len(tables), "y")
        missing = [k for k in self.fit_requires if fit_params.get(k) is None]
        if missing:
            raise CostModelError(f"{self.kind}: fit needs {', '.join(missing)} (one value per spec)")
        extra = {k: check_target(v, len(tables), k) if k in self.fit_requires else v for k, v in fit_params.items()}
        if len(tables) < self.min_samples:
            raise CostModelError(
                f"{self.kind}: too few measurements to fit: got {len(tables)}, need at least {self.min_samples}"
            )
        self._fit(tables, yy, **extra)
        self.metadata_ = {
            "training_spec_ids": [_spec_id(x) for x in items],
            "n_samples": len(items),
            "nnflash_version": code_version(),
            "fit_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return self

    def _fit(self, tables: list[list[LayerRecord]], y: np.ndarray, **kw: Any) -> None:
        raise NotImplementedError

    def _predict(self, tables: list[list[LayerRecord]], **kw: Any) -> np.ndarray:
        raise NotImplementedError

    def is_fitted(self) -> bool:
        return hasattr(self, "metadata_")

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise CostModelError(
                f"{self.kind}: this model is not fitted yet; call fit(X, y) or load a saved model first"
            )

    def predict(self, X: Sequence[Any], **kw: Any) -> np.ndarray:
        """Predicted ``target`` (ms, or mJ for the energy model) of every spec in ``X``."""
        self._check_fitted()
        tables = as_layer_tables(X)
        if not tables:
            return np.zeros(0)
        return np.asarray(self._predict(tables, **kw), dtype=np.float64)

    def predict_latency(self, X: Sequence[Any]) -> np.ndarray:
        """Predicted latency in ms (the energy model answers with its latency model)."""
        return self.predict(X)

    def score(self, X: Sequence[Any], y: Any) -> dict[str, float]:
        """RMSPE, MAPE, share within +-5% / +-10% and Spearman of ``predict(X)`` against ``y``."""
        from nnflash.calibration.crossval import report_metrics

        pred = self.predict(X)
        return report_metrics(check_target(y, len(pred), "y"), pred)

    def report(self) -> dict[str, Any]:
        """The learned values as physical numbers (for people; subclasses override)."""
        self._check_fitted()
        return dict(self._state())

    # ------------------------------------------------------------------ persistence

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.get_params(),
            "state": self._state(),
            "metadata": self.metadata_,
        }

    def save(self, path: str | Path, **metadata: Any) -> Path:
        """Write the model as JSON; ``metadata`` (device, device_facts, runtime, threads, cv, ...)
        is merged into ``metadata_`` first. Written through a temp file + rename."""
        self._check_fitted()
        self.metadata_.update({k: v for k, v in metadata.items() if v is not None})
        text = json.dumps(_jsonable(self.to_dict()), indent=1, sort_keys=True, allow_nan=False)
        p = Path(path)
        try:
            atomic_write_text(p, text + "\n")
        except OSError as e:
            raise CostModelError(f"cannot write cost model to {p}: {e.strerror or e}") from None
        return p


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# ------------------------------------------------------------------------------ the registry

#: Every registered cost model, by ``kind``, in the order of registration.
COST_MODELS: dict[str, type[CostModel]] = {}

_ModelClass = TypeVar("_ModelClass", bound="type[CostModel]")


def register_cost_model(cls: _ModelClass) -> _ModelClass:
    """Class decorator: register ``cls`` in :data:`COST_MODELS` under its ``kind``."""
    kind = cls.kind
    if not kind:
        raise TypeError(f"{cls.__name__}: a registered cost model needs a non-empty kind")
    known = COST_MODELS.get(kind)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"cost model kind {kind!r} is registered twice: {known.__qualname__} and {cls.__qualname__}")
    COST_MODELS[kind] = cls
    return cls


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
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise CostModelError(
            f"{source}: cost-model format version {version!r} is not supported "
            f"(this nnflash reads versions 1..{FORMAT_VERSION}; upgrade nnflash)"
        )
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in COST_MODELS:
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
    except (KeyError, TypeError, ValueError, IndexError) as e:
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
    except (ValueError, RecursionError) as e:  # a 5000-digit number, a nesting too deep
        raise CostModelError(f"cost model {p}: not valid JSON ({e})") from None
    return model_from_dict(obj, source=f"cost model {p}")


def check_compatible(
    model: CostModel,
    *,
    device: str | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> list[str]:
    """Warnings (one line each) when ``model`` was calibrated for another device, runtime, thread
    count or precision than the one it is about to predict for; empty when it matches or nothing is
    known. A model without a recorded precision was calibrated before precisions existed: fp32."""
    meta = getattr(model, "metadata_", {}) or {}
    out = []
    checks = (("device", device), ("runtime", runtime), ("threads", threads), ("precision", precision))
    for key, want in checks:
        have = meta.get(key, "fp32" if key == "precision" else None)
        if want is None:
            continue
        if have is None:
            out.append(f"cost model does not record its {key}; predicting for {key} {want!r} may be inaccurate")
        elif str(have) != str(want):
            out.append(f"cost model was calibrated for {key} {have!r}, not {want!r}: predictions may be far off")
    return out
