"""`nnflash search` below the CLI: read the cost models and the predictor, check they belong
together, run the search (:mod:`nnflash.search`), re-rank with a ``multi`` predictor, draw the Pareto
front, export the chosen networks (with their trained weights where ``nnflash train`` trained them).

- :func:`load_deployments` reads cost-model files into deployments (one per file; the same
  runtime, threads and precision twice is an error);
- :func:`load_objective` turns ``--objective`` / ``--accuracy`` into the search's objective and,
  for a ``multi`` predictor, a re-ranker;
- :func:`choose_space` picks the space: ``--space``, else the space the cost models were
  calibrated on, else ``--dataset``'s (or the predictor's dataset's) default, else ``flash``;
- :func:`run_search` searches (or computes the Pareto front) and re-ranks; space ``nb201`` is
  searched by enumeration (``--method exact`` only, no peak-memory limit; :mod:`nnflash.search.nb201`);
- :func:`plot_front` draws the front over faint random samples of the space;
- :func:`export_designs` writes verified ONNX/TFLite files of the designs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from nnflash.calibration import load_model
from nnflash.controller.errors import ConfigError
from nnflash.models.space import Nb201Space, get_space
from nnflash.search import (
    Deployment,
    Design,
    Limits,
    Objective,
    SearchError,
    default_margin,
    pareto_front,
    search,
)

if TYPE_CHECKING:  # the accuracy package imports torch (zero-cost proxies): only when a predictor is used
    from nnflash.calibration.accuracy import AccuracyModel

__all__ = [
    "SearchOutcome",
    "SearchRequest",
    "choose_space",
    "export_designs",
    "load_deployments",
    "load_objective",
    "plot_front",
    "run_search",
]


def load_deployments(paths: Sequence[str]) -> list[Deployment]:
    """One deployment per cost-model file (latency or energy model). Two files describing the same
    (device, runtime, threads, precision) are an error: the search could not tell them apart."""
    if not paths:
        raise ConfigError("--cost: give at least one cost model (nnflash calibrate --out COST.json)")
    out: list[Deployment] = []
    seen: dict[tuple[Any, ...], str] = {}
    for p in paths:
        model = load_model(p)
        try:
            dep = Deployment.from_model(model)
        except SearchError as e:
            raise ConfigError(f"--cost {p}: {e}") from None
        key = (dep.device, dep.runtime, dep.threads, dep.precision)
        if key in seen:
            raise ConfigError(
                f"--cost: {seen[key]} and {p} are both cost models of {dep.device}/{dep.label}; give one per deployment"
            )
        seen[key] = p
        out.append(dep)
    return out


@dataclass(frozen=True)
class Reranker:
    """A ``multi`` accuracy predictor that re-ranks the designs an NN-Degree search returns."""

    model: AccuracyModel
    data_dir: Optional[str] = None
    db_path: Optional[str] = None

    def predict(self, designs: Sequence[Design]) -> np.ndarray:
        from nnflash.controller.accuracy import predict_accuracy

        pred, _std = predict_accuracy(
            self.model, [d.spec for d in designs], data_dir=self.data_dir, db_path=self.db_path
        )
        return np.asarray(pred, dtype=np.float64)


def load_objective(
    objective_name: Optional[str],
    accuracy_path: Optional[str],
    *,
    data_dir: Optional[str] = None,
    db_path: Optional[str] = None,
) -> tuple[Objective, Optional[Reranker], Optional[AccuracyModel]]:
    """The search's objective, a re-ranker (a ``multi`` predictor: the search then maximizes
    NN-Degree and the re-ranker orders what it found), and the predictor itself (or None)."""
    if accuracy_path is not None and objective_name is not None:
        raise ConfigError("give either --accuracy ACC.json or --objective, not both")
    if accuracy_path is None:
        return Objective.parse(objective_name or "nn-degree"), None, None
    from nnflash.calibration.accuracy import load_accuracy_model

    predictor = load_accuracy_model(accuracy_path)
    if predictor.kind == "multi":
        return Objective.parse("nn-degree"), Reranker(predictor, data_dir, db_path), predictor
    try:
        return Objective.from_predictor(predictor), None, predictor
    except SearchError as e:
        raise ConfigError(f"--accuracy {accuracy_path}: {e}") from None


def choose_space(
    space_name: Optional[str],
    dataset: Optional[str],
    deployments: Sequence[Deployment],
    predictor: Optional[AccuracyModel],
) -> Any:
    """``--space``, else the space every cost model was calibrated on (where they record one),
    with ``--dataset``'s classes (or the predictor's dataset's); with a dataset but neither, the
    dataset's default space; else ``flash``."""
    if dataset is None and space_name is None and predictor is not None:
        dataset = (predictor.metadata_ or {}).get("dataset")
    if space_name is None:
        spaces = {
            (getattr(m, "metadata_", {}) or {}).get("space")
            for d in deployments
            for m in (d.latency_model, d.energy_model)
            if m is not None
        } - {None}
        if len(spaces) == 1:
            space_name = str(spaces.pop())
    if dataset is not None:
        from nnflash.controller.accuracy import dataset_space

        return dataset_space(dataset, space_name)
    return get_space(space_name or "flash")


def _check_predictor_space(predictor: Optional[AccuracyModel], space: Any) -> None:
    """A predictor fitted on another dataset's input shape or class count is refused (the
    search's objective checks flash/nnmass predictors itself; this covers ``multi`` too)."""
    if predictor is None:
        return
    meta = predictor.metadata_ or {}
    shape = meta.get("input_shape")
    ds = meta.get("dataset")
    if shape and list(shape) != list(space.input_shape):
        raise ConfigError(
            f"--accuracy: the {predictor.kind} predictor was fitted on {ds + ' ' if ds else ''}"
            f"{'x'.join(map(str, shape))} inputs; space {space.name!r} has {'x'.join(map(str, space.input_shape))}"
        )
    classes = meta.get("num_classes")
    if classes is not None and int(classes) != int(space.num_classes):
        raise ConfigError(
            f"--accuracy: the {predictor.kind} predictor was fitted on {classes}-class specs; space "
            f"{space.name!r} has {space.num_classes} classes (pass --dataset)"
        )


@dataclass(frozen=True)
class SearchRequest:
    cost_paths: tuple[str, ...]
    limits: Limits
    method: str = "exact"
    top_k: int = 1
    margin: Optional[float] = None
    objective_name: Optional[str] = None
    accuracy_path: Optional[str] = None
    space_name: Optional[str] = None
    dataset: Optional[str] = None
    pareto: bool = False
    rerank: int = 20
    seed: int = 0
    data_dir: Optional[str] = None
    db_path: Optional[str] = None


@dataclass
class SearchOutcome:
    designs: list[Design]
    space: Any
    deployments: list[Deployment]
    objective: Objective
    method: str
    margin: float
    margin_source: str
    time_s: float = 0.0
    build_s: float = 0.0
    evaluations: int = 0
    reranked_by: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


def _margin(request: SearchRequest, deployments: Sequence[Deployment]) -> tuple[float, str]:
    if request.margin is not None:
        m = float(request.margin)
        if not (math.isfinite(m) and 0 <= m < 1):
            raise ConfigError(f"--margin: must be a fraction in [0, 1), got {request.margin}")
        return m, "--margin"
    # the largest of the cost models' own suggestions: every deployment gets at least its own
    return max(_suggested_margin(d) for d in deployments), "the cost models' cross-validated 90th-percentile error"


def _suggested_margin(dep: Deployment) -> float:
    """:func:`nnflash.search.default_margin` of the latency model, and for an energy model (whose
    file's metadata holds ``cv`` of its latency and ``energy_cv``) the larger of the two p90s."""
    out = default_margin(dep)
    if dep.energy_model is not None:
        meta = getattr(dep.energy_model, "metadata_", {}) or {}
        for key in ("cv", "energy_cv"):
            p90 = (meta.get(key) or {}).get("p90")
            if isinstance(p90, (int, float)) and math.isfinite(p90) and 0 <= p90 < 1:
                out = max(out, min(float(p90), 0.5))  # the cap default_margin applies
    return out


def run_search(request: SearchRequest) -> SearchOutcome:
    """Everything ``nnflash search`` does before printing (see the module docstring)."""
    if request.top_k < 1:
        raise ConfigError(f"--top: must be a positive integer, got {request.top_k}")
    if request.rerank < 1:
        raise ConfigError(f"--rerank: must be a positive integer, got {request.rerank}")
    deployments = load_deployments(request.cost_paths)
    objective, reranker, predictor = load_objective(
        request.objective_name, request.accuracy_path, data_dir=request.data_dir, db_path=request.db_path
    )
    space = choose_space(request.space_name, request.dataset, deployments, predictor)
    _check_predictor_space(predictor, space)
    margin, source = _margin(request, deployments)
    if request.pareto:
        front = pareto_front(space, deployments, objective, against="latency", limits=request.limits)
        return SearchOutcome(front, space, deployments, objective, "exact", 0.0, "no margin on a front")
    k = max(request.top_k, request.rerank) if reranker is not None else request.top_k
    result = search(
        space,
        deployments,
        objective,
        request.limits,
        method=request.method,
        top_k=k,
        margin=margin,
        seed=request.seed,
    )
    designs = list(result.designs)
    reranked_by = None
    if reranker is not None:
        acc = reranker.predict(designs)
        order = np.argsort(-acc, kind="stable")
        name = f"accuracy:{reranker.model.kind}"
        designs = [
            dataclasses.replace(designs[i], objective_name=name, objective=float(acc[i]), accuracy=float(acc[i]))
            for i in order[: request.top_k]
        ]
        reranked_by = reranker.model.kind
    return SearchOutcome(
        designs,
        space,
        deployments,
        objective,
        result.method,
        margin,
        source,
        time_s=result.time_s,
        build_s=result.build_s,
        evaluations=result.evaluations,
        reranked_by=reranked_by,
        extra=dict(result.extra),
    )


def plot_front(outcome: SearchOutcome, path: str | Path, *, samples: int = 1000, seed: int = 0) -> Path:
    """The exact front (a staircase per deployment, best objective at most so costly) over
    ``samples`` random designs of the space drawn faintly behind, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnflash.models.metrics import nn_degree, nn_mass

    space, obj = outcome.space, outcome.objective
    specs = space.sample(samples, seed=seed)
    if isinstance(space, Nb201Space):
        from nnflash.search.nb201 import objective_values

        values = objective_values(obj, specs)
    else:
        d = np.array([[c.depth for c in s.cells] for s in specs])
        w = np.array([[c.width for c in s.cells] for s in specs])
        t = np.array([[c.tc for c in s.cells] for s in specs])
        metric = (nn_degree if obj.metric == "nn_degree" else nn_mass)(d, w, t)
        values = obj.value(metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, dep in enumerate(outcome.deployments):
        lat = dep.latency_model.predict(specs)
        ax.scatter(lat, values, s=5, alpha=0.15, color=f"C{k}", label=f"{len(specs)} random designs, {dep.label}")
    by_dep: dict[str, list[Design]] = {}
    for des in outcome.designs:
        by_dep.setdefault(des.deployment.label, []).append(des)
    labels = [dep.label for dep in outcome.deployments]
    for label, pts in by_dep.items():
        k = labels.index(label) if label in labels else 0
        pts = sorted(pts, key=lambda x: x.latency_ms)
        ax.step(
            [p.latency_ms for p in pts],
            [p.objective for p in pts],
            where="post",
            color=f"C{k}",
            lw=1.8,
            marker="o",
            ms=3,
            label=f"exact front, {label} ({len(pts)} designs)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(obj.name)
    ax.set_title(f"{obj.name} vs latency, space {space.name}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def export_designs(
    designs: Sequence[Design],
    out_dir: str | Path,
    formats: Sequence[str],
    *,
    db_path: Optional[str],
    dataset: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Verified ONNX/TFLite files of each design (TFLite int8 where its deployment runs int8),
    with the weights ``nnflash train`` stored for it in ``db_path`` where there are any; one row per
    (design, format): ``spec_id``, ``format``, ``path`` or ``error``, ``weights`` (or None)."""
    from nnflash.controller.weights import trained_weights
    from nnflash.models.export import FORMATS, export_many

    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"--format: unknown format {f!r} (expected {', '.join(FORMATS)})")
    out = Path(out_dir)
    if not out.parent.exists():
        raise ConfigError(f"--export: directory {out.parent} does not exist")
    weights = trained_weights(db_path, [d.spec_id for d in designs], dataset) if db_path else {}
    rows: list[dict[str, Any]] = []
    done: set[tuple[str, Optional[str]]] = set()
    for des in designs:
        q = "int8" if des.deployment.precision == "int8" else None
        if (des.spec_id, q) in done:
            continue
        done.add((des.spec_id, q))
        tw = weights.get(des.spec_id)
        w = {des.spec_id: tw.path} if tw is not None else None
        try:
            outcomes = export_many([des.spec], list(formats), out, quantize=q, weights=w)
        except Exception as e:  # a build error stops this design only
            outcomes = []
            for fmt in formats:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                rows.append({"spec_id": des.spec_id, "format": fmt, "error": msg, "weights": None})
        for o in outcomes:
            row: dict[str, Any] = {"spec_id": o.spec_id, "format": o.format, "quantization": o.quantization}
            if o.artifact is not None:
                row.update(path=str(o.artifact.path), sha256=o.artifact.sha256, max_rel_err=o.artifact.max_rel_err)
            else:
                row["error"] = (o.error or "export failed").splitlines()[0]
            row["weights"] = tw.to_dict() if tw is not None else None
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------- accelerator


@dataclass(frozen=True)
class AcceleratorOutcome:
    """``nnflash search --accelerator``: the best (network, accelerator configuration) pairs."""

    lines: list[dict[str, Any]]
    space: Any
    objective: Objective
    evaluated: int
    feasible: int
    time_s: float
    knobs: dict[str, list[Any]]
    min_adc_bits: int
    samples: int


def run_accelerator_search(
    accel_path: str,
    limits: Limits,
    *,
    objective_name: Optional[str] = None,
    accuracy_path: Optional[str] = None,
    space_name: Optional[str] = None,
    dataset: Optional[str] = None,
    top_k: int = 1,
    samples: int = 20_000,
    min_adc_bits: int = 5,
    seed: int = 0,
) -> AcceleratorOutcome:
    """Network and in-memory-computing accelerator searched together
    (:func:`nnflash.search.accelerator.codesign`) from an ``ACCEL.json`` (parameters and knob
    ranges); one JSON-ready line per design in ``nnflash search``'s format, ``deployment`` holding
    the accelerator's searched knobs and fixed parameters."""
    import json

    from nnflash.calibration.imc_model import parse_accelerator
    from nnflash.search.accelerator import codesign
    from nnflash.search.memory import peak_memory_mb

    if top_k < 1:
        raise ConfigError(f"--top: must be a positive integer, got {top_k}")
    if samples < 1:
        raise ConfigError(f"--samples: must be a positive integer, got {samples}")
    p = Path(accel_path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--accelerator {p}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"--accelerator {p}: not a readable JSON file ({type(e).__name__})") from None
    accel = parse_accelerator(obj, source=str(p))
    objective, reranker, predictor = load_objective(objective_name, accuracy_path)
    if reranker is not None:
        raise ConfigError("--accelerator: a multi predictor cannot rank accelerator designs; use flash or nnmass")
    space = choose_space(space_name, dataset, [], predictor)
    _check_predictor_space(predictor, space)
    res = codesign(space, accel, objective, limits, samples=samples, seed=seed, min_adc_bits=min_adc_bits, top=top_k)
    lines = []
    for d in res.designs:
        costs = {
            "max_area_mm2": d.area_mm2,
            "max_latency_ms": d.latency_ms,
            "max_energy_mj": d.energy_mj,
            "max_params": d.params,
            "max_macs": d.macs,
        }
        margins = {k: 1.0 - costs[k] / v for k, v in limits.given().items() if k in costs and v}
        lines.append(
            {
                "spec": d.spec.to_dict(),
                "spec_id": d.spec.spec_id,
                "deployment": {"accelerator": "imc", "knobs": dict(d.hardware), "params": dict(accel.params)},
                "objective": {"name": objective.name, "value": d.objective},
                "accuracy": d.objective if objective.predictor is not None else None,
                "latency_ms": d.latency_ms,
                "energy_mj": d.energy_mj,
                "params": d.params,
                "macs": d.macs,
                "peak_memory_mb": peak_memory_mb(d.spec),
                "area_mm2": d.area_mm2,
                "margins": margins,
            }
        )
    return AcceleratorOutcome(
        lines, space, objective, res.evaluated, res.feasible, res.seconds, res.knobs, min_adc_bits, samples
    )
