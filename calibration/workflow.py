"""The calibration workflow behind ``nnflash calibrate``: choose, measure, fit, cross-validate.

Measuring is a callback (``profile(specs) -> rows``; rows carry ``spec_id``, ``status``, the
visit's latency (``latency_ms``, or in the row's ``summary``; ``latency_ms_median`` in rows of
protocol v1) and ``energy_mj``), so this module needs no controller and is tested with a fake one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnflash.calibration.base import CostModel, make_model
from nnflash.calibration.crossval import cross_val_predict, report_metrics
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.select import cover, most_uncertain, plan_budget
from nnflash_agent.stats import model_latency_ms, visit_latency_of, visit_spread_of

ProfileFn = Callable[[list[Any]], Sequence[Mapping[str, Any]]]


@dataclass
class Calibration:
    """What :func:`fit_measurements` / :func:`calibrate` produce."""

    model: CostModel
    specs: list[Any]
    latency_ms: np.ndarray
    energy_mj: np.ndarray | None
    cv: dict[str, float]
    cv_predicted: np.ndarray
    energy_cv: dict[str, float] | None = None
    skipped: list[str] = field(default_factory=list)


def _positive(value: Any) -> bool:
    return value is not None and math.isfinite(float(value)) and float(value) > 0


def usable_rows(
    specs_by_id: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> tuple[list[Any], np.ndarray, np.ndarray | None, list[str]]:
    """Specs, latencies and (when every model has one) energies from the ``ok`` rows; the ids of
    models with no usable row (failed, disturbed, no latency, spec unknown).

    Only undisturbed visits count: a ``disturbed`` row (the agent saw other processes compete for
    the CPUs, stolen time, throttling) is never fitted. A model's latency is
    :func:`nnflash_agent.stats.model_latency_ms` of its visits' latencies
    (:func:`~nnflash_agent.stats.visit_latency_of`): the one definition that ``profile``, ``predict``
    and the report share. Its energy is the median of its visits' energies (visits without one are
    left out). Models keep the order of their first row."""
    visits: dict[str, list[Mapping[str, Any]]] = {}
    skipped = []
    for r in rows:
        sid = str(r.get("spec_id"))
        if r.get("status") != "ok" or visit_latency_of(r) is None:
            skipped.append(sid)
            continue
        if sid not in specs_by_id:
            skipped.append(sid)
            continue
        visits.setdefault(sid, []).append(r)
    specs = [specs_by_id[s] for s in visits]
    lat = np.array(
        [
            model_latency_ms([visit_latency_of(r) or math.nan for r in rs], [visit_spread_of(r) for r in rs])
            for rs in visits.values()
        ]
    )
    energy = None
    en_lists = [[float(r["energy_mj"]) for r in visits[s] if _positive(r.get("energy_mj"))] for s in visits]
    if visits and all(en_lists):
        energy = np.array([float(np.median(es)) for es in en_lists])
    return specs, lat, energy, sorted(set(skipped) - set(visits))


def fit_measurements(
    specs: Sequence[Any],
    latency_ms: Any,
    energy_mj: Any = None,
    *,
    model: str = "roofline",
    folds: int = 0,
    seed: int = 0,
) -> Calibration:
    """Fit ``model`` (or the energy model over it, when energies are given), cross-validated:
    ``folds = 0`` is leave-one-out up to 30 models, else 5-fold."""
    specs = list(specs)
    lat = np.asarray(latency_ms, float)
    cls = make_model(model)
    if len(specs) < cls.min_samples:
        raise CostModelError(
            f"too few measurements to fit a {model} model: {len(specs)} usable, need at least {cls.min_samples}"
        )
    k = folds if folds >= 2 else (len(specs) if len(specs) <= 30 else 5)
    pred = cross_val_predict(lambda: make_model(model), specs, lat, k=k, seed=seed)
    cv = report_metrics(lat, pred)
    cv["folds"] = float(min(k, len(specs)))
    # the 90th percentile of |predicted / measured - 1| (a fraction): the search's default margin
    cv["p90"] = float(np.quantile(np.abs(pred / lat - 1.0), 0.9))
    energy_cv = None
    if energy_mj is not None:
        en = np.asarray(energy_mj, float)
        epred = cross_val_predict(
            lambda: make_model("energy", latency_model=model), specs, en, k=k, seed=seed, latency_ms=lat
        )
        energy_cv = report_metrics(en, epred)
        energy_cv["p90"] = float(np.quantile(np.abs(epred / en - 1.0), 0.9))
        fitted = make_model("energy", latency_model=model).fit(specs, en, latency_ms=lat)
    else:
        fitted = make_model(model).fit(specs, lat)
    return Calibration(
        fitted, specs, lat, None if energy_mj is None else np.asarray(energy_mj, float), cv, pred, energy_cv
    )


def _why_not_ok(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the stored rows say about the models that did not measure ``ok`` (for an error)."""
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    statuses.pop("ok", None)
    if not statuses:
        return ""
    text = " (not ok: " + ", ".join(f"{n} {k}" for k, n in sorted(statuses.items())) + ")"
    if "disturbed" in statuses:
        text += (
            "; disturbed means other processes competed for the device's CPUs while it measured: "
            "run again when it is quieter (disturbed models are measured again), or accept a busier "
            "device with a higher --disturbed-share"
        )
    return text


def calibrate(
    candidates: Sequence[Any],
    budget: int,
    profile: ProfileFn,
    *,
    model: str = "roofline",
    seed: int = 0,
    active_share: float = 0.4,
    rounds: int = 2,
    log: Callable[[str], None] = lambda s: None,
) -> Calibration:
    """Choose ``budget`` of ``candidates`` (coverage first, then active rounds), measure them with
    ``profile``, fit and cross-validate. Re-running with the same seed chooses the same first
    round, so a resumed campaign skips what it measured."""
    cands = list(candidates)
    by_id = {s.spec_id: s for s in cands}
    steps = plan_budget(budget, active_share, rounds)
    first = [cands[i] for i in cover(cands, steps[0], seed=seed)]
    log(f"coverage: {len(first)} models spread over size, depth, width and skip density")
    rows = list(profile(first))
    for r, k in enumerate(steps[1:]):
        specs, lat, _, _ = usable_rows(by_id, rows)
        if len(specs) < make_model(model).min_samples:
            raise CostModelError(f"too few successful measurements to continue: {len(specs)}{_why_not_ok(rows)}")
        measured = {s.spec_id for s in specs} | {str(x.get("spec_id")) for x in rows}
        rest = [s for s in cands if s.spec_id not in measured]
        pick = most_uncertain(lambda: make_model(model), specs, lat, rest, k, seed=seed + 1 + r)
        log(f"active round {r + 1}: {k} models where bootstrap fits disagree most")
        rows += list(profile([rest[i] for i in pick]))
    specs, lat, energy, skipped = usable_rows(by_id, rows)
    out = fit_measurements(specs, lat, energy, model=model, seed=seed)
    out.skipped = skipped
    return out
