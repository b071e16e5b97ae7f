"""`nnflash run` below the CLI: the closed loop from a device to a recommended network measured on it.

One call of :func:`run_loop` does, in order, everything going into the one results database as it
happens (an interrupted run resumes; a second run with other limits reuses what is there):

1. **calibrate** (:func:`ensure_cost_model`, per thread count): the newest cost model stored for
   this (device, runtime, threads, precision) is reused when it was fitted on this space with the
   device's present agent version and a *spot check* confirms it: ``spot_checks`` models it was
   not fitted on (the same ones for the same stored model, so a rerun measures nothing new) are
   measured, and the median of ``|predicted / measured - 1|`` must be at most ``tolerance``.
   Otherwise :func:`nnflash.calibration.workflow.calibrate` profiles a budget of models through the
   campaign runner and fits a new one (a calibration that follows a rejected model draws other
   models: its seed moves on with the stored model's id);
2. **accuracy** (:func:`choose_objective`): a predictor file, one fitted from a training budget
   (:func:`nnflash.controller.training.run_trainings`, then ``fit_accuracy``), or NN-Degree, FLASH's
   training-free objective (a proxy of accuracy, never called one);
3. **search** (:func:`search_round`): the best design for each latency limit given (and the other
   limits), with the search's margin (the cost models' cross-validated 90th-percentile error);
   with no latency limit, one limit per point of a log-spaced grid across the latency range the
   calibration measured, which traces the Pareto front with 5-8 designs. Each design is searched
   again without margin to say what the margin cost in objective;
4. **verify** (:func:`verify_designs`): every design is exported (``out_dir/designs``) and measured
   on the device with calibration's passes and the one latency definition
   (:mod:`nnflash_agent.stats`: the median of a model's undisturbed visits). A design whose
   measured latency breaks its limit, or whose prediction is off by more than ``tolerance``, joins
   the cost model's training data; the model is refitted (:func:`refit`) and the search runs again,
   at most ``rounds`` rounds.

The report (:mod:`nnflash.controller.run_report`) and the design lines are written from the
:class:`LoopResult`. Devices, connections and observers come from the caller (configuration files
are read in the CLI layer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.calibration.base import COST_MODELS, CostModel, model_from_dict
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.workflow import calibrate, fit_measurements, usable_rows
from nnflash.controller.campaign import ConnectFn, MeasureSettings
from nnflash.controller.errors import ConfigError
from nnflash.controller.inventory import Device
from nnflash.controller.profiling import CampaignObserver, profile_in_passes, stored_rows
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import make_connection
from nnflash.models.errors import NnflashError
from nnflash.models.spec import AnySpec, parse_spec
from nnflash.search import (
    Deployment,
    Design,
    Infeasible,
    Limits,
    Objective,
    build_tables,
    default_margin,
    search,
)
from nnflash_agent.stats import model_latency_ms, visit_latency_of

__all__ = [
    "FULL",
    "QUICK",
    "CostState",
    "LoopPlan",
    "LoopResult",
    "RoundRecord",
    "RunInterrupted",
    "RunRequest",
    "SpotCheck",
    "Verified",
    "choose_objective",
    "ensure_cost_model",
    "latency_grid",
    "refit",
    "meta_of",
    "run_loop",
    "specs_by_id",
    "search_round",
    "verify_designs",
]


class RunInterrupted(NnflashError):
    """Ctrl-C stopped a measurement; what was measured is stored and a rerun resumes."""


@dataclass(frozen=True)
class LoopPlan:
    """How much the loop measures: the calibration's budget and candidate pool, passes per model,
    timed repeats per visit, and the points of the Pareto grid when no latency limit is given."""

    name: str
    budget: int
    pool: int
    passes: int
    repeat: int
    min_repeat_ms: float
    front_points: int


#: ``--quick``: a smaller calibration (12 models, 2 passes of 5 repeats) and 6 front points.
QUICK = LoopPlan("quick", budget=12, pool=1000, passes=2, repeat=5, min_repeat_ms=10.0, front_points=6)
#: The default: calibrate's own defaults (25 models, 5 passes of 10 repeats) and 8 front points.
FULL = LoopPlan("full", budget=25, pool=3000, passes=5, repeat=10, min_repeat_ms=25.0, front_points=8)


@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs, as data (the CLI builds it)."""

    device: Device
    space: Any
    db_path: str
    out_dir: str
    artifacts_dir: str
    runtime: str = "onnxruntime"
    threads: tuple[Optional[int], ...] = (1,)
    precision: str = "fp32"
    #: one search per value (the best design under each); empty: the Pareto grid
    latency_limits_ms: tuple[float, ...] = ()
    max_energy_mj: Optional[float] = None
    max_params: Optional[float] = None
    accuracy_path: Optional[str] = None
    train_budget: Optional[int] = None
    protocol: Optional[str] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    plan: LoopPlan = FULL
    rounds: int = 3
    tolerance: float = 0.10
    spot_checks: int = 3
    energy: str = "none"
    seed: int = 0
    #: extra :class:`MeasureSettings` fields (``disturbed_share_max=None`` keeps disturbed visits)
    measure: dict[str, Any] = field(default_factory=dict)
    #: a cost model to start from instead of the stored one (the spot check still decides)
    initial_models: dict[Optional[int], CostModel] = field(default_factory=dict)
    #: start from ``initial_models`` without a spot check (a test's deliberately wrong model)
    trust_initial: bool = False

    def settings(self, threads: Optional[int]) -> MeasureSettings:
        return MeasureSettings(
            runtime=self.runtime,
            threads=threads,
            precision=self.precision,
            energy=self.energy,
            repeat=self.plan.repeat,
            min_repeat_ms=self.plan.min_repeat_ms,
            **self.measure,
        )


@dataclass
class SpotCheck:
    """The fresh models a stored cost model was checked on."""

    spec_ids: list[str]
    predicted_ms: list[float]
    measured_ms: list[Optional[float]]
    median_error: Optional[float]
    passed: bool


@dataclass
class CostState:
    """The latency (or energy) model of one thread count, and where it came from."""

    threads: Optional[int]
    model: CostModel
    model_id: int
    path: str
    #: ``reused`` (a stored model the spot check confirmed), ``calibrated``, ``given`` or ``refitted``
    source: str
    spot: Optional[SpotCheck] = None
    #: why a stored model was not reused (None when it was, or when there was none)
    rejected: Optional[str] = None

    @property
    def cv(self) -> dict[str, Any]:
        return dict(meta_of(self.model).get("cv") or {})

    @property
    def training_ids(self) -> list[str]:
        return list(meta_of(self.model).get("training_spec_ids") or [])


@dataclass
class Verified:
    """One recommended design with its measurement on the device."""

    design: Design
    #: the latency limit it was searched for (None: no latency limit)
    limit_ms: Optional[float]
    #: the objective the best design under the same limits reaches without margin
    objective_no_margin: Optional[float]
    measured_ms: Optional[float] = None
    measured_mj: Optional[float] = None
    #: ``ok`` (an undisturbed latency), ``disturbed`` (only disturbed visits), ``failed``
    status: str = "failed"
    error: Optional[str] = None
    files: list[str] = field(default_factory=list)

    @property
    def prediction_error(self) -> Optional[float]:
        if self.measured_ms is None or self.measured_ms <= 0:
            return None
        return self.design.latency_ms / self.measured_ms - 1.0

    @property
    def meets_limit(self) -> Optional[bool]:
        if self.measured_ms is None:
            return None
        return self.limit_ms is None or self.measured_ms <= self.limit_ms

    def miss(self, tolerance: float) -> Optional[str]:
        """Why this design goes into the training data (None: it does not)."""
        if self.measured_ms is None:
            return None
        if self.meets_limit is False:
            return f"measured {self.measured_ms:.3f} ms breaks its {self.limit_ms:g} ms limit"
        err = self.prediction_error
        if err is not None and abs(err) > tolerance:
            return f"predicted {self.design.latency_ms:.3f} ms is {err:+.0%} off the measured {self.measured_ms:.3f} ms"
        return None

    def to_dict(self) -> dict[str, Any]:
        """A line of ``designs.jsonl``: the search's line plus the limit, the measurement and the files."""
        out = self.design.to_dict()
        out["limit_latency_ms"] = self.limit_ms
        out["objective_no_margin"] = self.objective_no_margin
        out["measured"] = {
            "latency_ms": self.measured_ms,
            "energy_mj": self.measured_mj,
            "status": self.status,
            "error": self.error,
            "prediction_error": self.prediction_error,
            "meets_limit": self.meets_limit,
        }
        out["files"] = list(self.files)
        return out


@dataclass
class RoundRecord:
    """One round of search and verification."""

    number: int
    margin: float
    model_ids: dict[Optional[int], int]
    cv: dict[Optional[int], dict[str, Any]]
    designs: list[Verified]
    infeasible: list[tuple[Optional[float], str]] = field(default_factory=list)
    #: spec ids added to the training data after this round, with the reason
    added: dict[str, str] = field(default_factory=dict)
    search_s: float = 0.0
    verify_s: float = 0.0


@dataclass
class LoopResult:
    request: RunRequest
    objective: Objective
    objective_note: str
    states: list[CostState]
    rounds: list[RoundRecord]
    stage_s: dict[str, float]
    #: the stored cost models' histories: the calibration states before any refit
    initial_states: list[CostState] = field(default_factory=list)
    device_facts: Optional[dict[str, Any]] = None
    disturbed: dict[str, int] = field(default_factory=dict)
    busy: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> RoundRecord:
        return self.rounds[-1]


#: disturbed attempts per model, visit and run (see :func:`_measure`)
DISTURBED_TRIES = 3

Log = Callable[[str], None]
ObserverFor = Callable[[str], CampaignObserver]


# ---------------------------------------------------------------------------------- measuring


def _measure(
    req: RunRequest,
    specs: Sequence[AnySpec],
    threads: Optional[int],
    what: str,
    connect: ConnectFn,
    observer_for: Optional[ObserverFor],
) -> dict[str, dict[str, Any]]:
    """Measure ``specs`` in the plan's passes; per spec id: ``latency_ms`` (the one definition, or
    None), ``energy_mj``, ``status`` (ok, disturbed, failed) and ``error``."""
    specs = list({s.spec_id: s for s in specs}.values())
    if not specs:
        return {}
    passes = req.plan.passes
    # each run gives a model 3 more disturbed attempts per visit than the database already holds:
    # a model left disturbed on a busy day is measured again by a later run
    seen = 0
    if Path(req.db_path).exists():
        with ResultsDB(req.db_path, readonly=True) as db:
            ids = {s.spec_id for s in specs}
            for visit in range(passes):
                counts = db.disturbed_counts(
                    req.device.name, req.runtime, threads, visit=visit, precision=req.precision
                )
                seen = max([seen, *(n for sid, n in counts.items() if sid in ids)])
    done = profile_in_passes(
        specs,
        [req.device],
        req.settings(threads),
        req.db_path,
        req.artifacts_dir,
        passes=passes,
        connect=connect,
        max_disturbed=seen + DISTURBED_TRIES,
        args={"command": "run", "stage": what, "threads": threads},
        observer_for=(lambda k: observer_for(f" {what} {k + 1}/{passes}")) if observer_for else None,
    )
    if done.interrupted_pass is not None:
        raise RunInterrupted(
            f"interrupted while measuring ({what}, pass {done.interrupted_pass} of {passes}); what was measured "
            f"is stored in {req.db_path}: run the same command again to resume"
        )
    by_id = {s.spec_id: s for s in specs}
    got, lat, energy, _ = usable_rows(by_id, done.rows)
    out: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(got):
        out[s.spec_id] = {
            "latency_ms": float(lat[i]),
            "energy_mj": float(energy[i]) if energy is not None else None,
            "status": "ok",
            "error": None,
        }
    with ResultsDB(req.db_path, readonly=True) as db:
        rows = [
            r
            for r in db.measurements(device=req.device.name, precision=req.precision)
            if r["spec_id"] in by_id and r["runtime"] == req.runtime and r.get("threads") == threads
        ]
    for sid in by_id:
        if sid in out:
            continue
        mine = [r for r in rows if r["spec_id"] == sid]
        if any(r["status"] == "disturbed" for r in mine):
            out[sid] = {"latency_ms": None, "energy_mj": None, "status": "disturbed", "error": "every visit disturbed"}
        else:
            err = next((r.get("error") for r in reversed(mine) if r.get("error")), None)
            out[sid] = {"latency_ms": None, "energy_mj": None, "status": "failed", "error": err or "not measured"}
    return out


def specs_by_id(db_path: str, ids: Sequence[str]) -> dict[str, AnySpec]:
    out: dict[str, AnySpec] = {}
    with ResultsDB(db_path, readonly=True) as db:
        for sid in ids:
            rec = db.get_spec(sid)
            if rec is not None:
                raw = rec["json"]
                out[sid] = parse_spec(raw if isinstance(raw, str) else json.dumps(raw))
    return out


# ---------------------------------------------------------------------------------- calibrate


def _model_row(db_path: str, device: str, runtime: str, threads: Optional[int], precision: str) -> Optional[dict]:
    if not Path(db_path).exists():
        return None
    with ResultsDB(db_path, readonly=True) as db:
        return db.latest_cost_model(device, runtime, threads, precision=precision)


def _agent_version(db_path: str, device: str) -> Optional[str]:
    if not Path(db_path).exists():
        return None
    with ResultsDB(db_path, readonly=True) as db:
        facts = db.latest_device_facts(device) or {}
    v = facts.get("agent_version") if isinstance(facts, dict) else None
    return str(v) if v is not None else None


def meta_of(model: CostModel) -> dict[str, Any]:
    """A cost model's metadata as a plain dict (empty when it has none)."""
    meta: Any = getattr(model, "metadata_", None) or {}
    return dict(meta)


def _unusable(model: CostModel, space: Any) -> Optional[str]:
    """Why a stored model cannot serve this run's space (None: it can)."""
    meta = meta_of(model)
    if model.target != "latency_ms" and model.kind != "energy":
        return f"it is a {model.kind} model"
    if meta.get("space") not in (None, space.name):
        return f"it was calibrated on space {meta.get('space')!r}, not {space.name!r}"
    shape = meta.get("input_shape")
    if shape and list(shape) != list(space.input_shape):
        return f"it was calibrated on {'x'.join(map(str, shape))} inputs"
    return None


def fresh_specs(space: Any, exclude: set[str], n: int, seed: int) -> list[AnySpec]:
    """``n`` distinct specs of ``space`` not in ``exclude``, the same ones for the same ``seed``."""
    out: dict[str, AnySpec] = {}
    for s in space.sample(max(10 * n, 20), seed=seed):
        if s.spec_id not in exclude and s.spec_id not in out:
            out[s.spec_id] = s
            if len(out) == n:
                break
    return list(out.values())


def _save_model(
    req: RunRequest,
    model: CostModel,
    threads: Optional[int],
    tag: str,
    **metadata: Any,
) -> tuple[int, str]:
    """Save ``model`` under ``out_dir`` and in the database; its row id and path."""
    with ResultsDB(req.db_path, readonly=True) as db:
        facts = db.latest_device_facts(req.device.name)
    tname = f"{threads}t" if threads is not None else "default"
    Path(req.out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(req.out_dir) / f"cost-{req.device.name}-{req.runtime}-{tname}-{tag}.json"
    model.save(
        path,
        device=req.device.name,
        device_facts=facts,
        agent_version=(facts or {}).get("agent_version") if isinstance(facts, dict) else None,
        runtime=req.runtime,
        threads=threads,
        precision=req.precision,
        space=req.space.name,
        input_shape=list(req.space.input_shape),
        num_classes=int(req.space.num_classes),
        **metadata,
    )
    with ResultsDB(req.db_path) as db:
        model_id = db.add_cost_model(req.device.name, req.runtime, threads, path.read_text(), precision=req.precision)
    return model_id, str(path)


def _spot_check(
    req: RunRequest, model: CostModel, model_id: int, threads: Optional[int], connect: ConnectFn, obs: Any
) -> SpotCheck:
    specs = fresh_specs(req.space, set(meta_of(model).get("training_spec_ids") or []), req.spot_checks, model_id)
    got = _measure(req, specs, threads, "spot check", connect, obs)
    pred = [float(x) for x in model.predict_latency(specs)]
    meas = [got[s.spec_id]["latency_ms"] for s in specs]
    errs = [abs(p / m - 1.0) for p, m in zip(pred, meas) if m]
    med = float(np.median(errs)) if errs else None
    # fewer than two usable models cannot confirm anything
    passed = med is not None and len(errs) >= min(2, len(specs)) and med <= req.tolerance
    return SpotCheck([s.spec_id for s in specs], pred, meas, med, passed)


def ensure_cost_model(
    req: RunRequest,
    threads: Optional[int],
    *,
    connect: ConnectFn = make_connection,
    observer_for: Optional[ObserverFor] = None,
    log: Log = lambda s: None,
) -> CostState:
    """The cost model of this (device, runtime, ``threads``, precision): a stored one the spot check
    confirms, else a new calibration (see the module docstring)."""
    key = f"{req.device.name}/{req.runtime}/{threads if threads is not None else 'default'} threads/{req.precision}"
    given = req.initial_models.get(threads)
    rejected: Optional[str] = None
    spot: Optional[SpotCheck] = None
    row = _model_row(req.db_path, req.device.name, req.runtime, threads, req.precision)
    if given is not None:
        model_id, path = _save_model(req, given, threads, "given", loop={"source": "given"})
        if req.trust_initial:
            log(f"calibrate {key}: starting from the cost model given (no spot check)")
            return CostState(threads, given, model_id, path, "given")
        candidate: Optional[tuple[CostModel, int]] = (given, model_id)
    elif row is not None:
        try:
            stored = model_from_dict(json.loads(row["json"]), source=f"stored cost model {row['id']}")
            candidate = (stored, int(row["id"]))
        except (CostModelError, ValueError) as e:
            candidate, rejected = None, f"the stored model cannot be read ({e})"
    else:
        candidate = None
    if candidate is not None:
        model, model_id = candidate
        rejected = _unusable(model, req.space)
        if rejected is None:
            log(f"calibrate {key}: checking stored cost model #{model_id} on {req.spot_checks} fresh models")
            spot = _spot_check(req, model, model_id, threads, connect, observer_for)
            version = _agent_version(req.db_path, req.device.name)
            mv = meta_of(model).get("agent_version")
            if mv is not None and version is not None and str(mv) != version:
                rejected = f"it was calibrated with agent {mv}, the device now runs {version}"
            elif not spot.passed:
                med = "no usable measurement" if spot.median_error is None else f"median error {spot.median_error:.1%}"
                rejected = f"the spot check failed ({med}, limit {req.tolerance:.0%})"
            else:
                log(
                    f"calibrate {key}: reusing cost model #{model_id} "
                    f"(spot check: median error {spot.median_error:.1%})"
                )
                path = str(
                    Path(req.out_dir) / f"cost-{req.device.name}-{req.runtime}-"
                    f"{f'{threads}t' if threads is not None else 'default'}-reused.json"
                )
                Path(req.out_dir).mkdir(parents=True, exist_ok=True)
                model.save(path)
                return CostState(threads, model, model_id, path, "reused", spot)
        log(f"calibrate {key}: not reusing cost model #{model_id}: {rejected}")
    cal_seed = req.seed if row is None else req.seed + 1 + int(row["id"])
    candidates = req.space.sample(req.plan.pool, seed=cal_seed)
    log(
        f"calibrate {key}: profiling {req.plan.budget} models in {req.plan.passes} passes "
        f"({req.plan.repeat} repeats each)"
    )

    def profile(specs: list[Any]) -> list[dict[str, Any]]:
        _measure(req, specs, threads, "calibration", connect, observer_for)
        return stored_rows(
            req.db_path, [req.device.name], req.runtime, threads, {s.spec_id for s in specs}, req.precision
        )

    try:
        cal = calibrate(candidates, req.plan.budget, profile, seed=cal_seed, log=log)
    except CostModelError as e:
        raise CostModelError(f"calibrate {key}: {e}{_busy_hint(req, threads)}") from None
    model_id, path = _save_model(
        req,
        cal.model,
        threads,
        "calibrated",
        cv=cal.cv,
        energy_cv=cal.energy_cv,
        budget=req.plan.budget,
        measurement={"passes": req.plan.passes, "repeat": req.plan.repeat, "min_repeat_ms": req.plan.min_repeat_ms},
        cv_predicted={s.spec_id: float(p) for s, p in zip(cal.specs, cal.cv_predicted)},
        loop={"source": "calibrated", "seed": cal_seed},
    )
    log(f"calibrate {key}: cost model #{model_id}, cross-validated p90 error {cal.cv.get('p90', math.nan):.1%}")
    return CostState(threads, cal.model, model_id, path, "calibrated", spot, rejected)


def _busy_hint(req: RunRequest, threads: Optional[int]) -> str:
    """A clause naming disturbed measurements when they are why too little was measured."""
    if not Path(req.db_path).exists():
        return ""
    with ResultsDB(req.db_path, readonly=True) as db:
        counts = db.status_counts(device=req.device.name, precision=req.precision)
    n_dist = counts.get("disturbed", 0)
    if not n_dist:
        return ""
    return (
        f" ({n_dist} of {sum(counts.values())} measurements on {req.device.name} were disturbed by other processes: "
        "measure when the device is quiet, or pass --busy-ok to keep disturbed visits)"
    )


def refit(
    req: RunRequest, state: CostState, add: Sequence[str], round_number: int, log: Log = lambda s: None
) -> CostState:
    """Refit ``state``'s model on its training data plus the ``add`` spec ids (every stored ok visit
    of each, the one latency definition), cross-validated, saved and stored as a new model."""
    ids = list(dict.fromkeys([*state.training_ids, *add]))
    rows = stored_rows(req.db_path, [req.device.name], req.runtime, state.threads, set(ids), req.precision)
    by_id = specs_by_id(req.db_path, ids)
    specs, lat, energy, _ = usable_rows(by_id, rows)
    kind = state.model.kind if state.model.kind in COST_MODELS else "roofline"
    if kind == "energy":
        kind = getattr(getattr(state.model, "latency_model_", None), "kind", "roofline")
    cal = fit_measurements(specs, lat, energy, model=kind, seed=req.seed)
    model_id, path = _save_model(
        req,
        cal.model,
        state.threads,
        f"round{round_number}",
        cv=cal.cv,
        energy_cv=cal.energy_cv,
        cv_predicted={s.spec_id: float(p) for s, p in zip(cal.specs, cal.cv_predicted)},
        loop={"source": "refitted", "round": round_number, "added": list(add), "from_model": state.model_id},
    )
    log(
        f"refit: cost model #{model_id} on {len(specs)} models ({len(add)} added), "
        f"cross-validated p90 error {cal.cv.get('p90', math.nan):.1%}"
    )
    return CostState(state.threads, cal.model, model_id, path, "refitted")


# ---------------------------------------------------------------------------------- accuracy


def choose_objective(
    req: RunRequest, log: Log = lambda s: None, estimate: Optional[Callable[[Any], None]] = None
) -> tuple[Objective, str, Any]:
    """The search's objective, a sentence for the report saying what it is, and a re-ranker (a
    ``multi`` predictor orders the top designs of an NN-Degree search; None otherwise)."""
    from nnflash.controller.codesign import load_objective

    if req.accuracy_path is not None and req.train_budget is not None:
        raise ConfigError("give either --accuracy ACC.json or --train-budget N, not both")
    if req.accuracy_path is not None:
        obj, reranker, predictor = load_objective(None, req.accuracy_path, data_dir=req.data_dir, db_path=req.db_path)
        meta = dict(getattr(predictor, "metadata_", None) or {})
        shape = meta.get("input_shape")
        if shape and list(shape) != list(req.space.input_shape):
            raise ConfigError(
                f"--accuracy {req.accuracy_path}: fitted on {'x'.join(map(str, shape))} inputs; space "
                f"{req.space.name!r} has {'x'.join(map(str, req.space.input_shape))} (pass --dataset)"
            )
        try:
            obj.check_space(req.space)
        except NnflashError as e:
            raise ConfigError(f"--accuracy {req.accuracy_path}: {e}") from None
        cv = meta.get("cv") or {}
        kind = getattr(predictor, "kind", "?")
        note = f"predicted accuracy from the {kind} predictor {req.accuracy_path}" + (
            f" (cross-validated MAE {cv['mae']:.2f} points)" if isinstance(cv.get("mae"), (int, float)) else ""
        )
        if reranker is not None:
            note += f", which re-ranks the {RERANK} best designs by NN-Degree under each limit"
        return obj, note, reranker
    if req.train_budget is not None:
        obj, note = _trained_objective(req, log, estimate)
        return obj, note, None
    return (
        Objective.parse("nn-degree"),
        "NN-Degree, FLASH's training-free objective: a proxy that grows with accuracy within a space, "
        "not an accuracy (give --accuracy ACC.json or --train-budget N for predicted accuracy)",
        None,
    )


#: how many designs of an NN-Degree search a ``multi`` predictor re-ranks under each limit
RERANK = 10


def _trained_objective(req: RunRequest, log: Log, estimate: Optional[Callable[[Any], None]]) -> tuple[Objective, str]:
    from nnflash.controller.accuracy import fit_accuracy, resolve_protocol, select_for_dataset
    from nnflash.controller.training import TrainingObserver, run_trainings
    from nnflash.models.training_protocol import TrainingProtocol

    budget = req.train_budget
    if budget is None or budget < 4:
        raise ConfigError(f"--train-budget: must be at least 4 networks, got {budget}")
    if req.protocol is None:
        raise ConfigError("--train-budget needs --protocol (e.g. quick)")
    dataset = req.dataset or "cifar10"
    protocol = resolve_protocol(req.protocol, req.db_path)
    if not isinstance(protocol, TrainingProtocol):
        raise ConfigError(f"--protocol {req.protocol}: an imported protocol cannot train new networks")
    specs = select_for_dataset(dataset, budget, space_name=req.space.name, seed=req.seed)

    class _Obs(TrainingObserver):
        def planned(self, plan: Any) -> None:
            if estimate is not None:
                estimate(plan)

        def trained(self, row: dict[str, Any]) -> None:
            log(f"trained {row['spec_id']}: {row['status']} (validation accuracy {row.get('val_accuracy')})")

    result = run_trainings(specs, dataset, protocol, req.seed, req.db_path, data_dir=req.data_dir, observer=_Obs())
    if result.interrupted:
        raise RunInterrupted(f"training interrupted; finished trainings are stored in {req.db_path}: rerun to resume")
    out = Path(req.out_dir) / f"accuracy-{dataset}-{protocol.name}.json"
    fitted = fit_accuracy(req.db_path, dataset, protocol, "flash", out, data_dir=req.data_dir)
    obj = Objective.from_predictor(fitted.model)
    note = (
        f"predicted accuracy from a flash predictor fitted on {fitted.n_specs} networks trained here "
        f"({dataset}, protocol {protocol.name}; cross-validated MAE {fitted.cv.get('mae', math.nan):.2f} points)"
        f" -> {out}"
    )
    return obj, note


# ---------------------------------------------------------------------------------- search


def latency_grid(
    states: Sequence[CostState], db_path: str, device: str, runtime: str, precision: str, n: int
) -> list[float]:
    """``n`` latency limits spaced evenly in log across the latencies the calibrations measured
    (from a little above the fastest to the slowest): the Pareto grid."""
    lats: list[float] = []
    for st in states:
        ids = set(st.training_ids)
        rows = stored_rows(db_path, [device], runtime, st.threads, ids, precision)
        per: dict[str, list[float]] = {}
        for r in rows:
            v = visit_latency_of(r)
            if v is not None:
                per.setdefault(str(r["spec_id"]), []).append(v)
        lats += [model_latency_ms(v) for v in per.values()]
    if len(lats) < 2:
        raise CostModelError("no measured latency range to spread a Pareto set over (calibrate first)")
    lo, hi = min(lats) * 1.25, max(lats)
    if hi <= lo:
        hi = lo * 4
    return [float(x) for x in np.geomspace(lo, hi, n)]


def _best(
    req: RunRequest,
    deployments: list[Deployment],
    objective: Objective,
    limits: Limits,
    margin: float,
    tables: Any,
    reranker: Any,
) -> Design:
    """The best design under ``limits``: the search's, or the re-ranker's best of its top designs."""
    k = RERANK if reranker is not None else 1
    designs = search(req.space, deployments, objective, limits, margin=margin, tables=tables, top_k=k).designs
    if reranker is None:
        return designs[0]
    acc = np.asarray(reranker.predict(designs), dtype=float)
    i = int(np.argmax(acc))
    name = f"accuracy:{reranker.model.kind}"
    return dataclasses.replace(designs[i], objective_name=name, objective=float(acc[i]), accuracy=float(acc[i]))


def search_round(
    req: RunRequest,
    objective: Objective,
    states: Sequence[CostState],
    limits_ms: Sequence[Optional[float]],
    number: int,
    reranker: Any = None,
) -> RoundRecord:
    """Search the best design under each latency limit (with the other limits) with the margin the
    cost models suggest, and without margin for the regret."""
    t0 = time.perf_counter()
    deployments = [Deployment.from_model(st.model) for st in states]
    margin = max(default_margin(d) for d in deployments)
    tables = build_tables(req.space, deployments, objective)
    rec = RoundRecord(
        number,
        margin,
        {st.threads: st.model_id for st in states},
        {st.threads: st.cv for st in states},
        [],
    )
    seen: set[tuple[str, str]] = set()
    for lim in limits_ms:
        limits = Limits(max_latency_ms=lim, max_energy_mj=req.max_energy_mj, max_params=req.max_params)
        try:
            best = _best(req, deployments, objective, limits, margin, tables, reranker)
        except Infeasible as e:
            rec.infeasible.append((lim, str(e)))
            continue
        try:
            no_margin: Optional[float] = _best(req, deployments, objective, limits, 0.0, tables, reranker).objective
        except Infeasible:
            no_margin = None
        key = (best.spec_id, best.deployment.label)
        if key in seen:
            # the same design for a looser limit adds nothing to the set; keep the tightest limit
            continue
        seen.add(key)
        rec.designs.append(Verified(best, lim, no_margin))
    rec.search_s = time.perf_counter() - t0
    return rec


# ---------------------------------------------------------------------------------- verify


def export_files(designs: Sequence[Design], out_dir: str | Path, runtime: str, precision: str) -> dict[str, list[str]]:
    """Export each design for its runtime (ONNX, or TFLite; int8 where the deployment is) into
    ``out_dir``; per spec id the files written (an export error is raised: the campaign could not
    measure it either)."""
    from nnflash.models.export import export_many
    from nnflash_agent.runners import RUNTIME_FORMATS

    fmt = RUNTIME_FORMATS[runtime]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    specs = list({d.spec_id: d.spec for d in designs}.values())
    quant = "int8" if precision == "int8" else None
    for o in export_many(specs, [fmt], out, quantize=quant):
        if o.artifact is not None:
            files.setdefault(o.spec_id, []).append(str(o.artifact.path))
    return files


def verify_designs(
    req: RunRequest,
    rec: RoundRecord,
    *,
    connect: ConnectFn = make_connection,
    observer_for: Optional[ObserverFor] = None,
) -> None:
    """Export and measure every design of ``rec`` (in place: measurements, status, files)."""
    t0 = time.perf_counter()
    files = export_files([v.design for v in rec.designs], Path(req.out_dir) / "designs", req.runtime, req.precision)
    by_threads: dict[Optional[int], list[Verified]] = {}
    for v in rec.designs:
        v.files = files.get(v.design.spec_id, [])
        by_threads.setdefault(v.design.deployment.threads, []).append(v)
    for threads, group in by_threads.items():
        got = _measure(
            req, [v.design.spec for v in group], threads, f"verify round {rec.number}", connect, observer_for
        )
        for v in group:
            m = got.get(v.design.spec_id) or {}
            v.measured_ms = m.get("latency_ms")
            v.measured_mj = m.get("energy_mj")
            v.status = str(m.get("status", "failed"))
            v.error = m.get("error")
    rec.verify_s = time.perf_counter() - t0


# ---------------------------------------------------------------------------------- the loop


def run_loop(
    req: RunRequest,
    *,
    connect: ConnectFn = make_connection,
    observer_for: Optional[ObserverFor] = None,
    log: Log = lambda s: None,
    estimate: Optional[Callable[[Any], None]] = None,
) -> LoopResult:
    """The whole loop (see the module docstring)."""
    if req.rounds < 1:
        raise ConfigError(f"--rounds: must be a positive integer, got {req.rounds}")
    if not (0 < req.tolerance < 1):
        raise ConfigError(f"tolerance: must be a fraction in (0, 1), got {req.tolerance}")
    for lim in req.latency_limits_ms:
        if not (math.isfinite(lim) and lim > 0):
            raise ConfigError(f"--max-latency-ms: must be positive, got {lim:g}")
    if not req.threads:
        raise ConfigError("--threads: give at least one thread count")
    Path(req.out_dir).mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    stage: dict[str, float] = {"calibrate": 0.0, "accuracy": 0.0, "search": 0.0, "verify": 0.0, "refit": 0.0}
    # the objective first: a bad predictor file is an error before anything is measured
    t0 = time.perf_counter()
    objective, note, reranker = choose_objective(req, log, estimate)
    stage["accuracy"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    states = [ensure_cost_model(req, th, connect=connect, observer_for=observer_for, log=log) for th in req.threads]
    stage["calibrate"] += time.perf_counter() - t0
    initial = list(states)
    limits: list[Any]
    if req.latency_limits_ms:
        limits = list(sorted(req.latency_limits_ms))
    else:
        limits = list(
            latency_grid(states, req.db_path, req.device.name, req.runtime, req.precision, req.plan.front_points)
        )
        log(f"no latency limit: a Pareto set from {len(limits)} limits, {limits[0]:.2f} to {limits[-1]:.2f} ms")
    rounds: list[RoundRecord] = []
    for number in range(1, req.rounds + 1):
        rec = search_round(req, objective, states, limits, number, reranker)
        stage["search"] += rec.search_s
        if not rec.designs:
            rounds.append(rec)
            raise Infeasible("no design meets the limits: " + "; ".join(msg for _, msg in rec.infeasible[:1]))
        log(f"round {number}: {len(rec.designs)} design(s), margin {rec.margin:.1%}; measuring them")
        verify_designs(req, rec, connect=connect, observer_for=observer_for)
        stage["verify"] += rec.verify_s
        rounds.append(rec)
        misses = {
            v.design.spec_id: (v.design.deployment.threads, r) for v in rec.designs if (r := v.miss(req.tolerance))
        }
        for v in rec.designs:
            log(
                f"  {v.design.spec_id} {v.design.deployment.label}: predicted {v.design.latency_ms:.3f} ms, measured "
                + (f"{v.measured_ms:.3f} ms" if v.measured_ms is not None else v.status)
                + (f" (limit {v.limit_ms:.3g} ms)" if v.limit_ms is not None else "")
            )
        if not misses or number == req.rounds:
            break
        rec.added = {sid: reason for sid, (_, reason) in misses.items()}
        t0 = time.perf_counter()
        new_states = []
        for st in states:
            add = [sid for sid, (th, _) in misses.items() if th == st.threads]
            new_states.append(refit(req, st, add, number, log) if add else st)
        states = new_states
        stage["refit"] += time.perf_counter() - t0
    with ResultsDB(req.db_path, readonly=True) as db:
        facts = db.latest_device_facts(req.device.name)
        dist = db.status_counts(device=req.device.name, precision=req.precision)
    if req.device.kind == "local":
        load_end = os.getloadavg()
        busy = {
            "load_start": load_start,
            "load_end": load_end,
            "note": f"This machine's load average (1 min) was {load_start[0]:.1f} when the run started and "
            f"{load_end[0]:.1f} when it ended, on {os.cpu_count()} CPUs: other work shared the device.",
        }
    else:
        busy = {}
    return LoopResult(
        req,
        objective,
        note,
        states,
        rounds,
        stage,
        initial_states=initial,
        device_facts=dict(facts) if isinstance(facts, dict) else None,
        disturbed=dist,
        busy=busy,
    )


def replace_request(req: RunRequest, **changes: Any) -> RunRequest:
    """``dataclasses.replace`` for a request (tests and the benchmark vary one field)."""
    return dataclasses.replace(req, **changes)
