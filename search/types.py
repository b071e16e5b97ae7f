"""The search's records: limits, objectives, deployments, designs, results and its errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

import numpy as np

from nnflash.calibration.base import CostModel
from nnflash.models.errors import NnflashError
from nnflash.models.nb201 import Nb201Spec
from nnflash.models.space import Nb201Space
from nnflash.models.spec import DenseSpec

#: The specs a search returns: the dense family's (spaces ``flash``...) and NAS-Bench-201's (``nb201``).
SearchSpec = Union[DenseSpec, Nb201Spec]

#: Search methods of :func:`nnflash.search.search`.
METHODS: tuple[str, ...] = ("exact", "shgo", "random")
#: Training-free objectives (``Objective.parse``); a monotone accuracy predictor is the third kind.
OBJECTIVE_NAMES: tuple[str, ...] = ("nn-degree", "nn-mass")
#: The fields of :class:`Limits`, in order; the design's own value of each is ``field[4:]``
#: (``max_latency_ms`` limits ``latency_ms``).
LIMIT_FIELDS: tuple[str, ...] = (
    "max_latency_ms",
    "max_energy_mj",
    "max_params",
    "max_macs",
    "max_peak_memory_mb",
    "max_area_mm2",
)
#: Limits on predicted costs, which the search keeps ``margin`` inside.
COST_LIMITS: tuple[str, ...] = ("max_latency_ms", "max_energy_mj")


class SearchError(NnflashError, ValueError):
    """A search request is malformed (unknown method or objective, bad limits, mismatched models)."""


class Infeasible(SearchError):
    """No design of the space meets the limits.

    ``tightest`` maps each limit field that was given to the smallest value the space can reach
    while the *other* limits hold (``None`` when the other limits alone already admit nothing); the
    message says the same in words.
    """

    def __init__(self, message: str, tightest: Optional[Mapping[str, Optional[float]]] = None) -> None:
        super().__init__(message)
        self.tightest: dict[str, Optional[float]] = dict(tightest or {})


@dataclass(frozen=True)
class Limits:
    """Upper limits on a design; ``None`` means no limit. Units are in the names."""

    max_latency_ms: Optional[float] = None
    max_energy_mj: Optional[float] = None
    max_params: Optional[float] = None
    max_macs: Optional[float] = None
    max_peak_memory_mb: Optional[float] = None
    max_area_mm2: Optional[float] = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise SearchError(f"{f.name}: must be a number, got {v!r}")
            if not math.isfinite(float(v)) or float(v) <= 0:
                raise SearchError(f"{f.name}: must be a positive finite number, got {v!r}")

    def given(self) -> dict[str, float]:
        """The limits that are set, ``{field: value}`` in :data:`LIMIT_FIELDS` order."""
        return {k: float(getattr(self, k)) for k in LIMIT_FIELDS if getattr(self, k) is not None}

    def effective(self, margin: float) -> dict[str, float]:
        """The limits the search enforces: cost limits (:data:`COST_LIMITS`) shrunk by ``margin``."""
        return {k: v * (1.0 - margin) if k in COST_LIMITS else v for k, v in self.given().items()}


def _curve_params(predictor: Any) -> dict[str, float]:
    state = predictor.to_dict()["state"]
    return {k: float(state[k]) for k in ("lo", "hi", "k", "u0", "log_mean", "log_std")}


@dataclass(frozen=True)
class Objective:
    """What the search maximizes.

    ``metric`` is ``nn_degree`` or ``nn_mass`` (sums over cells, which the exact method needs);
    with a ``predictor`` (a fitted accuracy predictor of kind ``flash`` or ``nnmass``), the value is
    its predicted accuracy, a monotone function of that metric (:meth:`value`): the search then
    optimizes ``direction * metric`` and maps the result through the function. With ``scores``
    (:meth:`from_scores`), the value of a network is looked up by its spec id: a predicted accuracy
    computed elsewhere (a ``multi`` predictor with its proxies, say); only the enumeration of
    space ``nb201`` can search such an objective. Build one with :meth:`parse`,
    :meth:`from_predictor` or :meth:`from_scores`.
    """

    name: str
    metric: str
    predictor: Any = field(default=None, compare=False, repr=False)
    #: +1 when a larger metric is better, -1 when a predictor decreases with it.
    direction: int = 1
    #: Precomputed objective values by spec id (:meth:`from_scores`), else ``None``.
    scores: Optional[Mapping[str, float]] = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, name: str) -> Objective:
        """``nn-degree`` or ``nn-mass`` (underscores accepted)."""
        key = str(name).strip().lower().replace("_", "-")
        if key not in OBJECTIVE_NAMES:
            raise SearchError(f"objective: unknown objective {name!r} (known: {', '.join(OBJECTIVE_NAMES)})")
        return cls(name=key, metric=key.replace("-", "_"))

    @classmethod
    def from_predictor(cls, predictor: Any) -> Objective:
        """The predicted accuracy of a fitted ``flash`` (NN-Degree) or ``nnmass`` (NN-Mass) predictor."""
        kind = getattr(predictor, "kind", None)
        if kind == "multi":
            raise SearchError(
                "objective: a multi accuracy predictor needs a torch module per candidate, so the search "
                "cannot optimize it directly; search with nn-degree and re-rank the top designs with it"
            )
        if kind not in ("flash", "nnmass"):
            raise SearchError(f"objective: accuracy predictor of kind {kind!r} is not supported (flash, nnmass)")
        if not predictor.is_fitted():
            raise SearchError(f"objective: the {kind} accuracy predictor is not fitted")
        p = _curve_params(predictor)
        direction = 1 if (p["hi"] - p["lo"]) * p["k"] >= 0 else -1
        metric = "nn_degree" if kind == "flash" else "nn_mass"
        return cls(name=f"accuracy:{kind}", metric=metric, predictor=predictor, direction=direction)

    @classmethod
    def from_scores(cls, name: str, scores: Mapping[str, float]) -> Objective:
        """Maximize precomputed values, one per spec id (predicted accuracies as fractions; the
        design's ``accuracy`` is its score). Space ``nb201`` only: its search enumerates every
        network, where the dense spaces' methods need a sum over cells."""
        if not isinstance(scores, Mapping) or not scores:
            raise SearchError("objective: scores must be a non-empty mapping of spec id to value")
        clean: dict[str, float] = {}
        for k, v in scores.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise SearchError(f"objective: the score of spec {k} must be a finite number, got {v!r}")
            clean[str(k)] = float(v)
        return cls(name=f"accuracy:{name}", metric="", scores=clean)

    def value(self, metric_values: Any) -> np.ndarray:
        """The objective of designs with these metric values (elementwise): the metric itself, or
        the predictor's accuracy (a fraction in 0..1) computed from it."""
        x = np.asarray(metric_values, dtype=np.float64)
        if self.predictor is None:
            return x
        p = _curve_params(self.predictor)
        u = (np.log1p(x) - p["log_mean"]) / p["log_std"] - p["u0"]
        z = np.clip(p["k"] * u, -60, 60)
        return np.clip(p["lo"] + (p["hi"] - p["lo"]) / (1.0 + np.exp(-z)), 0.0, 1.0)

    def check_space(self, space: Any) -> None:
        """Refuse a predictor fitted on another input shape or class count than ``space``'s, and
        precomputed scores on a space other than ``nb201``."""
        if self.scores is not None and not isinstance(space, Nb201Space):
            raise SearchError(
                f"objective {self.name}: precomputed scores can be searched on space nb201 only (it enumerates "
                f"every network); space {space.name!r} needs nn-degree, nn-mass or a flash/nnmass predictor"
            )
        if self.predictor is None:
            return
        meta = getattr(self.predictor, "metadata_", {}) or {}
        shape = meta.get("input_shape")
        if shape and list(shape) != list(space.input_shape):
            ds = meta.get("dataset")
            raise SearchError(
                f"objective: the accuracy predictor was fitted on {ds + ' ' if ds else ''}"
                f"{'x'.join(map(str, shape))} inputs; space {space.name!r} has "
                f"{'x'.join(map(str, space.input_shape))} (fit a predictor on that dataset)"
            )
        classes = meta.get("num_classes")
        if classes is not None and int(classes) != int(space.num_classes):
            raise SearchError(
                f"objective: the accuracy predictor was fitted on {classes}-class specs; space "
                f"{space.name!r} has {space.num_classes} classes"
            )


@dataclass(frozen=True)
class Deployment:
    """One way to run networks on a device: its latency model, optionally its energy model, and
    its label. :meth:`from_model` builds one from a saved cost model (an ``energy`` model brings its
    own latency model) and reads the label from the model's metadata."""

    latency_model: CostModel = field(repr=False)
    energy_model: Optional[CostModel] = field(default=None, repr=False)
    device: Optional[str] = None
    runtime: Optional[str] = None
    threads: Optional[int] = None
    precision: Optional[str] = None
    #: A name for people (``onnxruntime/2t/fp32``); defaults from the label.
    name: str = ""

    @classmethod
    def from_model(cls, model: CostModel, name: str = "") -> Deployment:
        if not model.is_fitted():
            raise SearchError(f"deployment: the {model.kind} cost model is not fitted")
        meta = dict(getattr(model, "metadata_", {}) or {})
        if model.target == "energy_mj":
            latency = getattr(model, "latency_model_", None)
            if latency is None:
                raise SearchError("deployment: the energy model has no latency model")
            energy: Optional[CostModel] = model
        else:
            latency, energy = model, None
        threads = meta.get("threads")
        return cls(
            latency_model=latency,
            energy_model=energy,
            device=meta.get("device"),
            runtime=meta.get("runtime"),
            threads=int(threads) if threads is not None else None,
            precision=meta.get("precision") or ("fp32" if meta.get("runtime") else None),
            name=name,
        )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [self.runtime or "?", f"{self.threads}t" if self.threads is not None else "?t", self.precision or "?"]
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The deployment of a design's JSON line."""
        return {
            "name": self.label,
            "device": self.device,
            "runtime": self.runtime,
            "threads": self.threads,
            "precision": self.precision,
            "latency_model": self.latency_model.kind,
            "energy_model": self.energy_model.kind if self.energy_model is not None else None,
        }


@dataclass(frozen=True)
class Design:
    """One searched design with its predicted costs, every one from the full cost models."""

    spec: SearchSpec
    deployment: Deployment
    objective_name: str
    #: The objective's value (the metric, or a predicted accuracy as a fraction).
    objective: float
    #: Predicted accuracy (fraction) when the objective is a predictor's, else ``None``.
    accuracy: Optional[float]
    latency_ms: float
    energy_mj: Optional[float]
    params: int
    macs: int
    #: ``None`` where nnflash has no peak-memory model (space ``nb201``).
    peak_memory_mb: Optional[float]
    area_mm2: Optional[float]
    #: ``1 - value / limit`` for every limit given (negative: violated).
    margins: dict[str, float]

    @property
    def spec_id(self) -> str:
        return self.spec.spec_id

    def meets(self) -> bool:
        return all(m >= 0 for m in self.margins.values())

    def to_dict(self) -> dict[str, Any]:
        """The design as one JSON line of ``nnflash search`` (``spec`` is the spec object)."""
        return {
            "spec": self.spec.to_dict(),
            "spec_id": self.spec_id,
            "deployment": self.deployment.to_dict(),
            "objective": {"name": self.objective_name, "value": self.objective},
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "energy_mj": self.energy_mj,
            "params": self.params,
            "macs": self.macs,
            "peak_memory_mb": self.peak_memory_mb,
            "area_mm2": self.area_mm2,
            "margins": dict(self.margins),
        }


@dataclass(frozen=True)
class SearchResult:
    """What :func:`nnflash.search.search` found."""

    designs: list[Design]
    method: str
    #: Seconds of the search itself (the exact method's table build excluded).
    time_s: float
    #: Seconds spent building the exact tables in this call (0 when they were passed in).
    build_s: float
    #: Full-network cost evaluations (a vectorized evaluation of N designs counts N).
    evaluations: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Design:
        return self.designs[0]
