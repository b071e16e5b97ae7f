"""The search's entry points: :func:`search`, :func:`pareto_front`, :func:`recheck`, :func:`evaluate`.

Every method proposes candidate designs from its own (vectorized) view of the costs; every design
it returns passes through :func:`recheck`, which predicts each cost of the final integer spec with
the full ``CostModel.predict``; a candidate that misses a limit there is dropped and the next one
taken, so nothing returned violates a limit whatever the method's internals did.

The dense spaces (``flash``...) are searched by the methods of :data:`METHODS`; space ``nb201``
(NAS-Bench-201's 15,625 cells) by exact enumeration (:mod:`nnflash.search.nb201`), its only method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from nnflash.models.metrics import dense_params_macs, layer_table, nb201_topology, nn_degree, nn_mass
from nnflash.models.nb201 import Nb201Spec
from nnflash.models.space import AnySpace, Nb201Space
from nnflash.search.memory import peak_memory_mb
from nnflash.search.types import (
    COST_LIMITS,
    METHODS,
    Deployment,
    Design,
    Limits,
    Objective,
    SearchError,
    SearchResult,
    SearchSpec,
)

# ------------------------------------------------------------------------------ checks


def check_deployments(space: AnySpace, deployments: Sequence[Deployment]) -> None:
    """Clear errors for an empty list, cost models of several devices mixed, or cost models fitted
    for another input shape or class count than ``space``'s (where their metadata records it)."""
    if not deployments:
        raise SearchError("search: give at least one cost model (deployment)")
    for d in deployments:
        if not isinstance(d, Deployment):
            raise SearchError(f"search: deployments must be Deployment objects, got {type(d).__name__}")
    devices = sorted({str(d.device) for d in deployments if d.device is not None})
    if len(devices) > 1:
        raise SearchError(
            f"search: the cost models are of several devices ({', '.join(devices)}); co-design chooses among "
            "configurations of one device, so search each device separately"
        )
    for d in deployments:
        for model in (d.latency_model, d.energy_model):
            if model is None:
                continue
            meta = getattr(model, "metadata_", {}) or {}
            shape = meta.get("input_shape")
            if shape and list(shape) != list(space.input_shape):
                raise SearchError(
                    f"search: cost model {d.label} was calibrated on {'x'.join(map(str, shape))} inputs; space "
                    f"{space.name!r} has {'x'.join(map(str, space.input_shape))}"
                )
            sp = meta.get("space")
            if sp and sp != space.name:
                raise SearchError(f"search: cost model {d.label} was calibrated on space {sp!r}, not {space.name!r}")


def _check_limits(limits: Limits, deployments: Sequence[Deployment], margin: float) -> None:
    if not isinstance(limits, Limits):
        raise SearchError(f"search: limits must be a Limits object, got {type(limits).__name__}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and 0 <= margin < 1):
        raise SearchError(f"margin: must be a number in [0, 1), got {margin!r}")
    if limits.max_energy_mj is not None and any(d.energy_model is None for d in deployments):
        missing = [d.label for d in deployments if d.energy_model is None]
        raise SearchError(f"max_energy_mj: cost model {missing[0]} predicts no energy (calibrate with an energy meter)")
    if limits.max_area_mm2 is not None:
        raise SearchError("max_area_mm2: none of the cost models has an area (only hardware models do)")


def default_margin(deployment: Deployment) -> float:
    """The relative safety margin that the latency model's cross-validation suggests: its 90th
    percentile of ``|predicted / measured - 1|`` when the metadata records one (``cv.p90``, a
    fraction), else ``1.645 * RMSPE`` (the 90th percentile of ``|e|`` for normal errors); 0 when the
    model records no cross-validation. Capped at 0.5: a model that far off needs more measurements,
    not a search that keeps every design at a tenth of its limit."""
    meta = getattr(deployment.latency_model, "metadata_", {}) or {}
    cv = meta.get("cv") or {}
    p90 = cv.get("p90")
    if isinstance(p90, (int, float)) and math.isfinite(p90) and p90 >= 0:
        return float(min(p90, 0.5))
    rmspe = cv.get("rmspe")
    if isinstance(rmspe, (int, float)) and math.isfinite(rmspe) and rmspe >= 0:
        return float(min(1.645 * rmspe / 100.0, 0.5))
    return 0.0


# ------------------------------------------------------------------------------ the full path


def _metric(spec: SearchSpec, metric: str) -> float:
    if isinstance(spec, Nb201Spec):
        return float(nb201_topology(spec)[metric])
    d = np.array([[c.depth for c in spec.cells]])
    w = np.array([[c.width for c in spec.cells]])
    t = np.array([[c.tc for c in spec.cells]])
    return float((nn_degree if metric == "nn_degree" else nn_mass)(d, w, t)[0])


def _costs(spec: SearchSpec, deployment: Deployment) -> dict[str, Optional[float]]:
    if isinstance(spec, Nb201Spec):
        return _nb201_costs(spec, deployment)
    d = np.array([[c.depth for c in spec.cells]])
    w = np.array([[c.width for c in spec.cells]])
    t = np.array([[c.tc for c in spec.cells]])
    params, macs = dense_params_macs(
        d, w, t, conv=spec.conv, input_shape=spec.input_shape, num_classes=spec.num_classes
    )
    latency = float(deployment.latency_model.predict([spec])[0])
    energy = None
    if deployment.energy_model is not None:
        energy = float(deployment.energy_model.predict([spec])[0])
    return {
        "latency_ms": latency,
        "energy_mj": energy,
        "params": float(params[0]),
        "macs": float(macs[0]),
        "peak_memory_mb": peak_memory_mb(spec),
        "area_mm2": None,
    }


def _nb201_costs(spec: Nb201Spec, deployment: Deployment) -> dict[str, Optional[float]]:
    """An nb201 network's costs: counts from its layer table (as ``compute_metrics``), latency and
    energy from the cost models' ``predict`` on the spec; no peak-memory model (``None``)."""
    table = layer_table(spec)
    energy = None
    if deployment.energy_model is not None:
        energy = float(deployment.energy_model.predict([spec])[0])
    return {
        "latency_ms": float(deployment.latency_model.predict([spec])[0]),
        "energy_mj": energy,
        "params": float(sum(x.params for x in table)),
        "macs": float(sum(x.macs for x in table)),
        "peak_memory_mb": None,
        "area_mm2": None,
    }


def _margins(costs: dict[str, Optional[float]], limits: Limits) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, limit in limits.given().items():
        value = costs.get(name[4:])
        out[name] = -math.inf if value is None else 1.0 - float(value) / limit
    return out


def recheck(
    design_or_spec: Union[Design, SearchSpec], deployment: Optional[Deployment], limits: Limits, margin: float = 0.0
) -> dict[str, float]:
    """The margin of a design (or spec) to every given limit, ``1 - value / limit``, from the full
    cost models (``CostModel.predict`` on the final integer spec) and the exact counts. With
    ``deployment=None`` a :class:`Design`'s own deployment is used.

    A design meets the limits when every margin is ``>= 0`` and the cost limits' margins
    (latency, energy) are ``>= margin``: :func:`meets` says so."""
    dep: Optional[Deployment] = deployment
    if isinstance(design_or_spec, Design):
        spec = design_or_spec.spec
        dep = deployment if deployment is not None else design_or_spec.deployment
    else:
        spec = design_or_spec
    if dep is None:
        raise SearchError("recheck: a spec needs a deployment")
    return _margins(_costs(spec, dep), limits)


def meets(margins: dict[str, float], margin: float = 0.0) -> bool:
    """Whether :func:`recheck`'s ``margins`` meet every limit (cost limits by at least ``margin``)."""
    return all(m >= (margin if k in COST_LIMITS else 0.0) for k, m in margins.items())


def evaluate(spec: SearchSpec, deployment: Deployment, objective: Objective, limits: Optional[Limits] = None) -> Design:
    """A :class:`Design` of ``spec`` on ``deployment``, every value from the full path (cost models'
    ``predict``, the predictor's ``predict`` or the objective's score, exact counts)."""
    costs = _costs(spec, deployment)
    if objective.scores is not None:
        if spec.spec_id not in objective.scores:
            raise SearchError(f"objective {objective.name}: no score for spec {spec.spec_id}")
        value = float(objective.scores[spec.spec_id])
        accuracy: Optional[float] = value
    elif objective.predictor is not None:
        value = float(objective.predictor.predict([spec])[0])
        accuracy = value
    else:
        accuracy = None
        value = _metric(spec, objective.metric)
    return Design(
        spec=spec,
        deployment=deployment,
        objective_name=objective.name,
        objective=value,
        accuracy=accuracy,
        latency_ms=float(costs["latency_ms"]),  # type: ignore[arg-type]
        energy_mj=costs["energy_mj"],
        params=int(costs["params"]),  # type: ignore[arg-type]
        macs=int(costs["macs"]),  # type: ignore[arg-type]
        peak_memory_mb=None if costs["peak_memory_mb"] is None else float(costs["peak_memory_mb"]),
        area_mm2=None,
        margins=_margins(costs, limits or Limits()),
    )


# ------------------------------------------------------------------------------ the methods


def build_tables(
    space: AnySpace,
    deployments: Sequence[Deployment],
    objective: Objective,
    *,
    specs: Optional[Sequence[Nb201Spec]] = None,
) -> Any:
    """The exact method's one-time tables (per-cell costs and Pareto fronts keyed on the coupling
    state, for every deployment; for space ``nb201`` every network's predicted costs, over
    ``specs`` when given, else the whole space); pass them to :func:`search` / :func:`pareto_front`
    as ``tables=``."""
    from nnflash.search.exact import ExactTables

    check_deployments(space, deployments)
    objective.check_space(space)
    if isinstance(space, Nb201Space):
        from nnflash.search.nb201 import Nb201Tables

        return Nb201Tables.build(space, list(deployments), objective, specs)
    if specs is not None:
        raise SearchError(f"search: specs= (a subset of candidates) applies to space nb201 only, not {space.name!r}")
    return ExactTables.build(space, list(deployments), objective)


def _finalize(
    candidates: Sequence[tuple[SearchSpec, Deployment]],
    objective: Objective,
    limits: Limits,
    margin: float,
    top_k: int,
) -> list[Design]:
    """Re-check candidates (best first) with the full path; keep the first ``top_k`` distinct ones
    that meet every limit."""
    out: list[Design] = []
    seen: set[tuple[str, int]] = set()
    for spec, dep in candidates:
        key = (spec.spec_id, id(dep))
        if key in seen:
            continue
        seen.add(key)
        design = evaluate(spec, dep, objective, limits)
        if meets(design.margins, margin):
            out.append(design)
            if len(out) >= top_k:
                break
    return out


def search(
    space: AnySpace,
    deployments: Sequence[Deployment],
    objective: Objective,
    limits: Limits,
    *,
    method: str = "exact",
    top_k: int = 1,
    margin: float = 0.0,
    seed: int = 0,
    tables: Any = None,
    evaluations: Optional[int] = None,
) -> SearchResult:
    """The best ``top_k`` designs of ``space`` (over every deployment) under ``limits``.

    ``margin`` keeps predicted latency and energy that share inside their limits. ``evaluations``
    sets the ``random`` method's number of full-network evaluations per deployment (default:
    about what ``shgo`` uses, :data:`nnflash.search.shgo.DEFAULT_EVALUATIONS`). Every method
    works on the per-cell tables (:func:`build_tables`; built here when ``tables`` is None, and
    their build time reported as ``build_s``); ``random`` is seeded by ``seed`` (``shgo``'s
    Sobol sampling is deterministic). Space ``nb201`` has one method, ``exact``: every network's
    costs predicted and ranked (:mod:`nnflash.search.nb201`; its tables cover ``build_tables``'s
    ``specs`` when passed in). Raises :class:`Infeasible` when no design meets the limits,
    :class:`SearchError` for bad arguments."""
    if method not in METHODS:
        raise SearchError(f"method: unknown method {method!r} (known: {', '.join(METHODS)})")
    if not (isinstance(top_k, int) and top_k >= 1):
        raise SearchError(f"top_k: must be a positive integer, got {top_k!r}")
    check_deployments(space, deployments)
    objective.check_space(space)
    _check_limits(limits, deployments, margin)
    deps = list(deployments)
    if isinstance(space, Nb201Space):
        return _search_nb201(space, deps, objective, limits, method, top_k, margin, tables)
    build_s = 0.0
    from nnflash.search.exact import ExactTables, exact_candidates

    if tables is None:
        t0 = time.perf_counter()
        tables = ExactTables.build(space, deps, objective)
        build_s = time.perf_counter() - t0
    elif not isinstance(tables, ExactTables) or tables.space != space or tables.objective != objective:
        raise SearchError("search: the tables passed were built for another space or objective")
    t0 = time.perf_counter()
    if method == "exact":
        cands, n_eval = exact_candidates(tables, limits, margin, top_k)
    elif method == "shgo":
        from nnflash.search.shgo import shgo_candidates

        cands, n_eval = shgo_candidates(tables, limits, margin, top_k, seed)
    else:
        from nnflash.search.randomsearch import random_candidates
        from nnflash.search.shgo import DEFAULT_EVALUATIONS

        per = int(evaluations) if evaluations is not None else DEFAULT_EVALUATIONS
        if per < 1:
            raise SearchError(f"evaluations: must be a positive integer, got {evaluations!r}")
        cands, n_eval = random_candidates(tables, limits, margin, top_k, seed, per)
    designs = _finalize(cands, objective, limits, margin, top_k)
    elapsed = time.perf_counter() - t0
    if not designs:
        from nnflash.search.infeasible import diagnose

        raise diagnose(tables, limits, margin, method=method)
    return SearchResult(designs=designs, method=method, time_s=elapsed, build_s=build_s, evaluations=n_eval)


def _nb201_tables(space: Nb201Space, deps: list[Deployment], objective: Objective, tables: Any) -> tuple[Any, float]:
    from nnflash.search.nb201 import Nb201Tables

    if tables is None:
        built = Nb201Tables.build(space, deps, objective)
        return built, built.build_s
    if (
        not isinstance(tables, Nb201Tables)
        or tables.space != space
        or tables.objective != objective
        or tables.objective.scores is not objective.scores
        or list(tables.deployments) != deps
    ):
        raise SearchError("search: the tables passed were built for another space, objective or deployments")
    return tables, 0.0


def _search_nb201(
    space: Nb201Space,
    deps: list[Deployment],
    objective: Objective,
    limits: Limits,
    method: str,
    top_k: int,
    margin: float,
    tables: Any,
) -> SearchResult:
    """Space ``nb201``: every network ranked (:mod:`nnflash.search.nb201`), the best re-checked."""
    from nnflash.search.nb201 import check_limits, diagnose, nb201_candidates

    if method != "exact":
        raise SearchError(
            f"method: {method} does not apply to space nb201 (its {space.count():,} networks are enumerated "
            "exactly, in seconds); use --method exact"
        )
    check_limits(limits)
    tables, build_s = _nb201_tables(space, deps, objective, tables)
    t0 = time.perf_counter()
    cands, n_eval = nb201_candidates(tables, limits, margin)
    designs = _finalize(cands, objective, limits, margin, top_k)
    elapsed = time.perf_counter() - t0
    if not designs:
        raise diagnose(tables, limits, margin, method=method)
    return SearchResult(designs=designs, method=method, time_s=elapsed, build_s=build_s, evaluations=n_eval)


def pareto_front(
    space: AnySpace,
    deployments: Sequence[Deployment],
    objective: Objective,
    *,
    against: str = "latency",
    limits: Optional[Limits] = None,
    tables: Any = None,
) -> list[Design]:
    """The exact front of the objective against ``latency`` or ``energy`` over every deployment:
    each design on it has the best objective of any design at most as costly (and meeting
    ``limits``), sorted by cost; computed from the exact tables, not sampled, and every point
    re-checked with the full path."""
    from nnflash.search.exact import ExactTables, exact_front

    if against not in ("latency", "energy"):
        raise SearchError(f"against: must be latency or energy, got {against!r}")
    check_deployments(space, deployments)
    objective.check_space(space)
    lim = limits or Limits()
    deps = list(deployments)
    _check_limits(lim, deps, 0.0)
    if against == "energy" and any(d.energy_model is None for d in deps):
        raise SearchError("pareto_front: against energy needs an energy model for every deployment")
    if isinstance(space, Nb201Space):
        from nnflash.search.nb201 import check_limits, nb201_front

        check_limits(lim)
        tables, _ = _nb201_tables(space, deps, objective, tables)
        out = []
        for spec, dep in nb201_front(tables, against, lim):
            design = evaluate(spec, dep, objective, lim)
            if meets(design.margins):
                out.append(design)
        return out
    if tables is None:
        tables = ExactTables.build(space, deps, objective)
    return exact_front(tables, against, lim)
