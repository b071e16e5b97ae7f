"""The accuracy-predictor base class (the cost models' conventions), its registry and JSON files.

Conventions (checked for every registered predictor by ``tests/unit/test_accuracy_contract.py``):

- ``__init__`` stores hyper-parameters only (``get_params``/``set_params``);
- ``fit(X, y, proxies=None)`` validates and returns ``self``; learned values end in ``_``;
- ``predict(X, proxies=None)`` returns accuracies as fractions in 0..1 and refuses an unfitted
  predictor, or specs of another input shape than the ones it was fitted on, with a clear error;
- ``score(X, y)`` returns Spearman, Kendall and the MAE in accuracy points
  (:func:`nnflash.calibration.accuracy.metrics.accuracy_metrics`).

``X`` is a sequence of specs (spec objects or spec dicts); ``y`` the trained top-1 accuracies as
fractions. Predictors that use zero-cost proxies (``needs_proxies``) take ``proxies``: one mapping per
spec with the values of :data:`nnflash.models.proxies.PROXY_NAMES`, computed on one batch whose key
the caller records in the metadata (``proxy_batch``), so predictions use the same batch.

Saved predictors are JSON, never pickle::

    {"format": "nnflash-accuracy-model", "format_version": 1, "kind": "multi",
     "params": {...}, "state": {...},
     "metadata": {"dataset": ..., "protocol_hash": ..., "input_shape": [1, 28, 28], "num_classes": 10,
                  "training_spec_ids": [...], "n_samples": ..., "cv": {...}, "proxy_batch": {...},
                  "nnflash_version": ..., "fit_date": ...}}
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

import numpy as np

from nnflash.calibration.base import _jsonable, code_version
from nnflash.models.errors import NnflashError
from nnflash.models.metrics import compute_metrics
from nnflash.models.proxies import PROXY_NAMES
from nnflash.models.spec import AnySpec, parse_spec
from nnflash_agent.fileio import atomic_write_text

FORMAT = "nnflash-accuracy-model"
FORMAT_VERSION = 1


class AccuracyModelError(NnflashError, ValueError):
    """An accuracy predictor cannot be fitted, used, saved or loaded (one line says why)."""


def as_specs(X: Any) -> list[AnySpec]:
    """``X`` (a sequence of specs or spec dicts) as a list of spec objects, with clear errors."""
    if X is None or isinstance(X, (str, bytes, Mapping)) or hasattr(X, "spec_id"):
        raise AccuracyModelError("X: must be a sequence of specs, not a single one")
    if isinstance(X, np.ndarray):
        raise AccuracyModelError("X: must be a sequence of specs, not a numeric array (predictors compute features)")
    try:
        items = list(X)
    except TypeError:
        raise AccuracyModelError(f"X: must be a sequence of specs, got {type(X).__name__}") from None
    out: list[AnySpec] = []
    for i, item in enumerate(items):
        if hasattr(item, "spec_id") and hasattr(item, "input_shape"):
            out.append(item)
        elif isinstance(item, Mapping):
            try:
                out.append(parse_spec(item))
            except NnflashError as e:
                raise AccuracyModelError(f"X[{i}]: {e}") from None
        else:
            raise AccuracyModelError(f"X[{i}]: not a spec ({type(item).__name__})")
    return out


def check_accuracy(y: Any, n: int, name: str = "y") -> np.ndarray:
    """``y`` as ``n`` finite fractions in 0..1, or a clear error (percentages are refused)."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise AccuracyModelError(f"{name}: must be an array of numbers") from None
    if arr.ndim != 1:
        raise AccuracyModelError(f"{name}: must be 1-D (one accuracy per spec), got shape {arr.shape}")
    if len(arr) != n:
        raise AccuracyModelError(f"{name}: {len(arr)} values for {n} specs in X")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise AccuracyModelError(f"{name}: must be finite, got {arr[bad[0]]} at index {bad[0]}")
    bad = np.flatnonzero((arr < 0) | (arr > 1))
    if len(bad):
        raise AccuracyModelError(f"{name}: accuracies must be fractions in 0..1, got {arr[bad[0]]:g} at index {bad[0]}")
    return arr


def spec_features(specs: Sequence[AnySpec]) -> dict[str, np.ndarray]:
    """``nn_degree`` (NaN for families without one), ``nn_mass``, ``params`` and ``macs`` per spec."""
    rows = [compute_metrics(s) for s in specs]
    return {
        "nn_degree": np.array([float(r.get("nn_degree", np.nan)) for r in rows]),
        "nn_mass": np.array([float(r["nn_mass"]) for r in rows]),
        "params": np.array([float(r["params"]) for r in rows]),
        "macs": np.array([float(r["macs"]) for r in rows]),
    }


def proxy_matrix(proxies: Any, n: int) -> np.ndarray:
    """``(n, len(PROXY_NAMES))`` float array from one mapping per spec, or a clear error."""
    if proxies is None:
        raise AccuracyModelError("this predictor needs the zero-cost proxies of every spec (proxies=...)")
    rows = list(proxies)
    if len(rows) != n:
        raise AccuracyModelError(f"proxies: {len(rows)} entries for {n} specs")
    out = np.empty((n, len(PROXY_NAMES)))
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise AccuracyModelError(f"proxies[{i}]: must be a mapping of proxy name to value")
        for j, name in enumerate(PROXY_NAMES):
            v = row.get(name)
            if v is None or not np.isfinite(float(v)):
                raise AccuracyModelError(f"proxies[{i}]: {name} missing or not finite ({v!r})")
            out[i, j] = float(v)
    return out


def _spec_shape(spec: AnySpec) -> list[int]:
    return [int(v) for v in spec.input_shape]


class AccuracyModel:
    """Base class of every accuracy predictor (see the module docstring)."""

    kind: ClassVar[str] = ""
    #: Fewest trained specs ``fit`` accepts.
    min_samples: ClassVar[int] = 5
    #: Whether ``fit``/``predict`` need ``proxies``.
    needs_proxies: ClassVar[bool] = False

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

    def set_params(self, **params: Any) -> AccuracyModel:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise AccuracyModelError(
                    f"{self.kind}: unknown hyper-parameter {key!r} (known: {', '.join(sorted(valid)) or 'none'})"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ fit / predict

    def _validate_params(self) -> None:
        """Raise AccuracyModelError for hyper-parameters out of range (subclasses extend)."""

    def fit(self, X: Sequence[Any], y: Any, proxies: Optional[Sequence[Mapping[str, float]]] = None) -> AccuracyModel:
        """Fit on specs ``X`` and their trained accuracies ``y`` (fractions); returns ``self``."""
        self._validate_params()
        specs = as_specs(X)
        yy = check_accuracy(y, len(specs))
        shapes = {tuple(_spec_shape(s)) for s in specs}
        if len(shapes) > 1:
            raise AccuracyModelError(
                f"{self.kind}: specs of several input shapes "
                f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}); fit one predictor per dataset"
            )
        if len(specs) < self.min_samples:
            raise AccuracyModelError(
                f"{self.kind}: too few trained specs to fit: got {len(specs)}, need at least {self.min_samples}"
            )
        pm = proxy_matrix(proxies, len(specs)) if self.needs_proxies else None
        self._fit(specs, yy, pm)
        self.metadata_: dict[str, Any] = {
            "input_shape": list(next(iter(shapes))),
            "num_classes": int(specs[0].num_classes),
            "training_spec_ids": [s.spec_id for s in specs],
            "n_samples": len(specs),
            "nnflash_version": code_version(),
            "fit_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return self

    def _fit(self, specs: list[AnySpec], y: np.ndarray, proxies: Optional[np.ndarray]) -> None:
        raise NotImplementedError

    def _predict(self, specs: list[AnySpec], proxies: Optional[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Predicted accuracies (fractions) and their standard deviations (None: no uncertainty)."""
        raise NotImplementedError

    def is_fitted(self) -> bool:
        return hasattr(self, "metadata_")

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise AccuracyModelError(
                f"{self.kind}: this predictor is not fitted yet; call fit(X, y) or load a saved one first"
            )

    def check_specs(self, specs: Sequence[AnySpec]) -> None:
        """Refuse specs whose input shape or class count differs from the fitted ones."""
        self._check_fitted()
        want = list(self.metadata_.get("input_shape") or [])
        classes = self.metadata_.get("num_classes")
        ds = self.metadata_.get("dataset")
        where = f"{ds} ({'x'.join(map(str, want))})" if ds else "x".join(map(str, want))
        for s in specs:
            if want and _spec_shape(s) != want:
                raise AccuracyModelError(
                    f"{self.kind} accuracy predictor was fitted on {where} specs; spec {s.spec_id} has input "
                    f"shape {'x'.join(map(str, s.input_shape))} (fit a predictor on that dataset)"
                )
            if classes is not None and int(s.num_classes) != int(classes):
                raise AccuracyModelError(
                    f"{self.kind} accuracy predictor was fitted on {classes}-class specs; spec {s.spec_id} "
                    f"has {s.num_classes} classes"
                )

    def predict_with_std(
        self, X: Sequence[Any], proxies: Optional[Sequence[Mapping[str, float]]] = None
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Predicted accuracies (fractions in 0..1) and a standard deviation per prediction where
        the predictor has one (else None)."""
        self._check_fitted()
        specs = as_specs(X)
        self.check_specs(specs)
        if not specs:
            return np.zeros(0), (np.zeros(0) if self.needs_proxies else None)
        pm = proxy_matrix(proxies, len(specs)) if self.needs_proxies else None
        pred, std = self._predict(specs, pm)
        pred = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)
        return pred, (None if std is None else np.asarray(std, dtype=np.float64))

    def predict(self, X: Sequence[Any], proxies: Optional[Sequence[Mapping[str, float]]] = None) -> np.ndarray:
        """Predicted top-1 accuracy (a fraction in 0..1) of every spec in ``X``."""
        return self.predict_with_std(X, proxies)[0]

    def score(
        self, X: Sequence[Any], y: Any, proxies: Optional[Sequence[Mapping[str, float]]] = None
    ) -> dict[str, float]:
        """Spearman, Kendall, MAE and RMSE (accuracy points) of ``predict(X)`` against ``y``."""
        from nnflash.calibration.accuracy.metrics import accuracy_metrics

        pred = self.predict(X, proxies)
        return accuracy_metrics(check_accuracy(y, len(pred)), pred)

    def report(self) -> dict[str, Any]:
        """The learned values (for people)."""
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
        """Write the predictor as JSON (``metadata`` -- dataset, protocol_hash, cv, ... -- merged
        into ``metadata_`` first), through a temp file and a rename."""
        self._check_fitted()
        self.metadata_.update({k: v for k, v in metadata.items() if v is not None})
        text = json.dumps(_jsonable(self.to_dict()), indent=1, sort_keys=True, allow_nan=False)
        p = Path(path)
        try:
            atomic_write_text(p, text + "\n")
        except OSError as e:
            raise AccuracyModelError(f"cannot write accuracy predictor to {p}: {e.strerror or e}") from None
        return p


# ------------------------------------------------------------------------------ the registry

#: Every registered accuracy predictor, by ``kind``, in the order of registration.
ACCURACY_MODELS: dict[str, type[AccuracyModel]] = {}

_Cls = TypeVar("_Cls", bound="type[AccuracyModel]")


def register_accuracy_model(cls: _Cls) -> _Cls:
    """Class decorator: register ``cls`` in :data:`ACCURACY_MODELS` under its ``kind``."""
    kind = cls.kind
    if not kind:
        raise TypeError(f"{cls.__name__}: a registered accuracy predictor needs a non-empty kind")
    known = ACCURACY_MODELS.get(kind)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(
            f"accuracy predictor kind {kind!r} is registered twice: {known.__qualname__} and {cls.__qualname__}"
        )
    ACCURACY_MODELS[kind] = cls
    return cls


def make_accuracy_model(kind: str, **params: Any) -> AccuracyModel:
    """A fresh, unfitted predictor of a registered ``kind``."""
    cls = ACCURACY_MODELS.get(kind)
    if cls is None:
        raise AccuracyModelError(f"unknown accuracy predictor {kind!r} (known: {', '.join(sorted(ACCURACY_MODELS))})")
    try:
        return cls(**params)
    except TypeError as e:
        raise AccuracyModelError(f"{kind}: bad hyper-parameters: {e}") from None


def accuracy_model_from_dict(obj: Any, source: str = "accuracy predictor") -> AccuracyModel:
    """Rebuild a fitted predictor from :meth:`AccuracyModel.to_dict` output (clear errors otherwise)."""
    if not isinstance(obj, Mapping):
        raise AccuracyModelError(f"{source}: not an accuracy predictor (expected a JSON object)")
    if obj.get("format") != FORMAT:
        raise AccuracyModelError(f"{source}: not an nnflash accuracy predictor (format {obj.get('format')!r})")
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise AccuracyModelError(
            f"{source}: accuracy-predictor format version {version!r} is not supported "
            f"(this nnflash reads versions 1..{FORMAT_VERSION}; upgrade nnflash)"
        )
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in ACCURACY_MODELS:
        raise AccuracyModelError(
            f"{source}: unknown accuracy-predictor kind {kind!r} (known: {', '.join(sorted(ACCURACY_MODELS))})"
        )
    params, state, meta = obj.get("params"), obj.get("state"), obj.get("metadata")
    if not isinstance(params, Mapping) or not isinstance(state, Mapping) or not isinstance(meta, Mapping):
        raise AccuracyModelError(f"{source}: incomplete accuracy predictor (needs params, state and metadata)")
    model = make_accuracy_model(str(kind), **params)
    try:
        model._validate_params()
        model._set_state(state)
    except AccuracyModelError as e:
        raise AccuracyModelError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise AccuracyModelError(f"{source}: corrupt {kind} state ({type(e).__name__}: {e})") from None
    model.metadata_ = dict(meta)
    return model


def load_accuracy_model(path: str | Path) -> AccuracyModel:
    """Load a predictor saved by :meth:`AccuracyModel.save`."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise AccuracyModelError(f"accuracy predictor {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AccuracyModelError(f"accuracy predictor {p}: cannot read ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise AccuracyModelError(f"accuracy predictor {p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, a nesting too deep
        raise AccuracyModelError(f"accuracy predictor {p}: not valid JSON ({e})") from None
    return accuracy_model_from_dict(obj, source=f"accuracy predictor {p}")
