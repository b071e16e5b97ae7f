"""Issue 14's benchmark: the co-design search's methods side by side against the exact optimum.

With the calibrated cost model of this machine (``nnflash calibrate --device local --threads 1
--budget 25``, run here under ``nice`` and cached in ``.nnflash-cache/`` when none is) and NN-Degree
as the objective, over limit levels spanning the space's latency range (plus levels with a
parameter or peak-memory limit on top of a mid latency limit, and energy levels when the cost model
predicts energy), every method searches once per level at margin 0, the setting regret is
measured at:

- ``exact`` (the reference; its one-time table build is timed apart),
- ``shgo`` (our hierarchical SHGO),
- ``random`` (as many full-network evaluations as shgo used, the API's default),
- ``tpe`` (Optuna's TPE sampler with the limits as constraints, the same number of trials as
  shgo's median evaluations: the generic tool a user would reach for).

Per method: median and worst time per search, regret (objective below the exact optimum, as a share
of it; median, 95th percentile and the share of levels within 0.5%), hit rate (the exact optimum's
configuration found), violations (a returned design that misses a limit when re-checked with the
full cost model: must be 0), failures (nothing returned where the exact method found a design), and
the hypervolume of the method's designs over the latency levels against that of the exact front,
in the box latency in [0, the largest latency level] x NN-Degree in [0, the exact front's best].

With ``--accuracy ACC.json`` (a fitted ``flash`` or ``nnmass`` accuracy predictor of the cost
model's space) the objective is the predicted accuracy instead, and the regret is also printed in
accuracy points (the issue's goal with a predictor: within 0.1 points in at least 95% of the levels).

Run: ``python benchmarks/search.py [--cost COST.json] [--accuracy ACC.json] [--levels 50] [--tpe-every 5]``
(the TPE column runs on every ``--tpe-every``-th latency level: each TPE study costs seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.calibration import load_model
from nnflash.models.space import get_space
from nnflash.search import (
    Deployment,
    Infeasible,
    Limits,
    Objective,
    build_tables,
    evaluate,
    meets,
    pareto_front,
    recheck,
    search,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".nnflash-cache"
DEFAULT_COST = CACHE / "local-onnxruntime-1t.json"


def ensure_cost_model(path: Path, busy_ok: bool) -> Path:
    """The cached cost model, or calibrate one now (under ``nice``) and cache it; ``busy_ok`` keeps
    measurements the agent finds disturbed by other processes (``--disturbed-share 1``)."""
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    exe = Path(sys.executable).with_name("nnflash")
    cmd = ["nice", "-n", "5", str(exe), "calibrate", "--device", "local", "--threads", "1", "--budget", "25"]
    db = CACHE / ("search-calibration-busy.db" if busy_ok else "search-calibration.db")
    cmd += ["--db", str(db), "--out", str(path)]
    cmd += ["--disturbed-share", "1"] if busy_ok else []
    print("calibrating the local device (no cached cost model):", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return path


def config(design: Any) -> tuple[Any, ...]:
    """A design's configuration (cells and deployment), independent of the spec's wiring seed."""
    cells = tuple((c.depth, c.width, c.tc) for c in design.spec.cells)
    return cells, design.deployment.label


def tpe_search(space: Any, dep: Deployment, objective: Objective, limits: Limits, trials: int, seed: int) -> Any:
    """Optuna TPE over (depth, width, skip cap) per cell, the limits as constraints; the best
    feasible trial's design (re-checked) or None."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def build(trial: Any) -> Any:
        cells = []
        for i, c in enumerate(space.cells):
            d = trial.suggest_categorical(f"d{i}", list(c.depths))
            w = trial.suggest_categorical(f"w{i}", list(c.widths))
            cap = min(c.tc_max, w * max(d - 2, 0))
            t = min(trial.suggest_int(f"t{i}", 0, c.tc_max), cap)  # out-of-range caps clip to the largest
            cells.append((d, w, t))
        d_, w_, t_ = (np.array(x) for x in zip(*cells))
        return space.to_spec(d_, w_, t_)

    def fn(trial: Any) -> float:
        spec = build(trial)
        des = evaluate(spec, dep, objective, limits)
        violation = [max(0.0, -m) for m in des.margins.values()]
        for name, v in zip(des.margins, violation):
            trial.set_constraint(name, v)  # feasible when every value is <= 0
        trial.set_user_attr("violation", violation)
        return des.objective

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(fn, n_trials=trials)
    feasible = [t for t in study.trials if t.value is not None and max(t.user_attrs.get("violation") or [0.0]) <= 0]
    if not feasible:
        return None
    best = max(feasible, key=lambda t: t.value)
    return evaluate(build(best), dep, objective, limits)


def hypervolume(points: list[tuple[float, float]], lat_ref: float, obj_ref: float) -> float:
    """2-D hypervolume of (latency to minimize, objective to maximize) points in the box
    [0, lat_ref] x [0, obj_ref] (dominated area, clipped to the box)."""
    pts = sorted((min(lat, lat_ref), min(obj, obj_ref)) for lat, obj in points if lat <= lat_ref)
    area, best = 0.0, 0.0
    xs = [p[0] for p in pts] + [lat_ref]
    for i, (lat, obj) in enumerate(pts):
        best = max(best, obj)
        area += (xs[i + 1] - lat) * best
    return area


def levels(front: list[Any], n: int) -> list[float]:
    """``n`` latency limits from just above the fastest design to the latency of the best one."""
    lo = min(d.latency_ms for d in front)
    hi = max(d.latency_ms for d in front)
    return [float(v) for v in np.geomspace(lo * 1.001, hi * 1.02, n)]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", default=str(DEFAULT_COST), help="Latency (or energy) cost model of the local device.")
    ap.add_argument("--levels", type=int, default=50, help="Latency limit levels.")
    ap.add_argument("--extra-levels", type=int, default=10, help="Levels with a params / memory / energy limit.")
    ap.add_argument("--tpe-every", type=int, default=5, help="Run TPE on every k-th level (0: never).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--busy-ok", action="store_true", help="Calibrating: keep measurements disturbed by other load.")
    ap.add_argument("--accuracy", default=None, help="A fitted flash/nnmass accuracy predictor as the objective.")
    ap.add_argument("--json", dest="json_path", default=None, help="Also write the per-level records here.")
    args = ap.parse_args(argv)

    cost = ensure_cost_model(Path(args.cost), args.busy_ok)
    model = load_model(cost)
    dep = Deployment.from_model(model)
    meta = model.metadata_
    space = get_space(meta.get("space") or "flash")
    if args.accuracy:
        from nnflash.calibration.accuracy import load_accuracy_model

        objective = Objective.from_predictor(load_accuracy_model(args.accuracy))
        objective.check_space(space)
        obj_label = f"predicted accuracy ({args.accuracy})"
    else:
        objective = Objective.parse("nn-degree")
        obj_label = "NN-Degree"
    print(
        f"cost model {cost}: {model.kind} for {meta.get('device')} / {dep.label}, cv "
        f"RMSPE {meta.get('cv', {}).get('rmspe', float('nan')):.1f}%; space {space.name} ({space.count():.3g} "
        f"configurations); objective {obj_label}; margin 0; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    t0 = time.perf_counter()
    tables = build_tables(space, [dep], objective)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    front = pareto_front(space, [dep], objective, against="latency", tables=tables)
    front_s = time.perf_counter() - t0
    print(f"exact tables built in {build_s:.2f} s; exact latency front ({len(front)} designs) in {front_s:.2f} s")

    lat_levels = levels(front, args.levels)
    mid = lat_levels[len(lat_levels) // 2]
    all_limits: list[tuple[str, Limits]] = [(f"latency<={v:.3f}", Limits(max_latency_ms=v)) for v in lat_levels]
    costly = max(front, key=lambda d: d.objective)
    n_extra = args.extra_levels
    for k, frac in enumerate(np.linspace(0.1, 0.9, n_extra)):
        if k % 2 == 0:
            p = float(costly.params * frac)
            all_limits.append((f"latency<={mid:.3f},params<={p:.0f}", Limits(max_latency_ms=mid, max_params=p)))
        else:
            m = float(costly.peak_memory_mb * frac)
            lim = Limits(max_latency_ms=mid, max_peak_memory_mb=m)
            all_limits.append((f"latency<={mid:.3f},peak_mb<={m:.3f}", lim))
    if dep.energy_model is not None:
        e_front = pareto_front(space, [dep], objective, against="energy", tables=tables)
        e_lo, e_hi = min(d.energy_mj for d in e_front), max(d.energy_mj for d in e_front)
        for v in np.geomspace(e_lo * 1.001, e_hi * 1.02, n_extra):
            all_limits.append((f"energy<={v:.3f}", Limits(max_energy_mj=float(v))))
    else:
        print("energy levels: none (the cost model has no energy: calibrated without a meter)")

    methods = ["exact", "shgo", "random", "tpe"]
    rec: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    shgo_evals: list[int] = []
    for i, (name, lim) in enumerate(all_limits):
        try:
            ex = search(space, [dep], objective, lim, method="exact", tables=tables)
        except Infeasible:
            print(f"  level {name}: infeasible, skipped")
            continue
        best = ex.best
        row_base = {"level": name, "exact_objective": best.objective}
        for m in methods:
            if m == "tpe" and (args.tpe_every <= 0 or i % args.tpe_every):
                continue
            t0 = time.perf_counter()
            try:
                if m == "exact":
                    got, n_eval = best, ex.evaluations
                    elapsed = ex.time_s
                elif m == "tpe":
                    trials = int(statistics.median(shgo_evals)) if shgo_evals else 200
                    got, n_eval = tpe_search(space, dep, objective, lim, trials, args.seed + i), trials
                    elapsed = time.perf_counter() - t0
                else:
                    r = search(space, [dep], objective, lim, method=m, seed=args.seed + i)
                    got, n_eval, elapsed = r.best, r.evaluations, r.time_s
                    if m == "shgo":
                        shgo_evals.append(n_eval)
            except Infeasible:
                got, n_eval, elapsed = None, 0, time.perf_counter() - t0
            row = dict(row_base, time_s=elapsed, evaluations=n_eval)
            if got is None:
                row.update(found=False, regret=1.0, hit=False, violation=False)
            else:
                margins = recheck(got.spec, got.deployment, lim)
                row.update(
                    found=True,
                    objective=got.objective,
                    latency_ms=got.latency_ms,
                    regret=max(0.0, (best.objective - got.objective) / best.objective),
                    regret_points=max(0.0, 100 * (best.objective - got.objective)),
                    hit=config(got) == config(best) or abs(got.objective - best.objective) <= 1e-9 * best.objective,
                    violation=not meets(margins, 0.0),
                )
            rec[m].append(row)
        if i % 10 == 0:
            print(f"  {i + 1}/{len(all_limits)} levels done", flush=True)

    # hypervolume over the latency levels: each method's designs against the exact front's
    lat_ref = max(lat_levels)
    obj_ref = max(d.objective for d in front)
    hv_exact = hypervolume([(d.latency_ms, d.objective) for d in front], lat_ref, obj_ref)
    print()
    print(f"{len(rec['exact'])} feasible levels ({args.levels} latency levels {lat_levels[0]:.3f}..{lat_ref:.3f} ms")
    print(f"plus {len(all_limits) - args.levels} with a params, peak-memory or energy limit); exact table build")
    print(f"{build_s:.2f} s apart. Hypervolume box: latency [0, {lat_ref:.3f}] ms x {obj_label} [0, {obj_ref:.4g}].")
    hdr = (
        f"{'method':<7} {'levels':>6} {'median s':>9} {'worst s':>8} {'regret med':>10} {'p95':>7} "
        f"{'<=0.5%':>7} {'hit':>5} {'viol':>4} {'fail':>4} {'evals':>6} {'HV/exact':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for m in methods:
        rows = rec[m]
        if not rows:
            continue
        times = [r["time_s"] for r in rows]
        reg = [r["regret"] for r in rows]
        lat_rows = [r for r in rows if r["level"].startswith("latency<=") and "," not in r["level"] and r["found"]]
        hv = hypervolume([(r["latency_ms"], r["objective"]) for r in lat_rows], lat_ref, obj_ref)
        print(
            f"{m:<7} {len(rows):>6} {statistics.median(times):>9.4f} {max(times):>8.3f} "
            f"{100 * statistics.median(reg):>9.3f}% {100 * float(np.quantile(reg, 0.95)):>6.2f}% "
            f"{100 * np.mean([x <= 0.005 for x in reg]):>6.0f}% {100 * np.mean([r['hit'] for r in rows]):>4.0f}% "
            f"{sum(r['violation'] for r in rows):>4} {sum(not r['found'] for r in rows):>4} "
            f"{int(statistics.median(r['evaluations'] for r in rows)):>6} {hv / hv_exact:>8.4f}"
        )
    print()
    print("regret: (exact optimum - found) / exact optimum, a missing design counts as 1; hit: the exact")
    print("optimum's configuration (or its objective) found; viol: designs that miss a limit on re-check (0 is")
    print("the requirement); HV/exact: hypervolume of the designs found at the latency levels over the exact")
    print("front's (1 = the front's area in the box).")
    if args.accuracy:
        print()
        print("with the predictor: regret in accuracy points (a missing design counts as 100)")
        for m in methods:
            rows = rec[m]
            if rows:
                pts = [r["regret_points"] if r["found"] else 100.0 for r in rows]
                print(
                    f"{m:<7} median {statistics.median(pts):.3f} pt, p95 {float(np.quantile(pts, 0.95)):.3f} pt, "
                    f"worst {max(pts):.3f} pt, within 0.1 pt {100 * np.mean([x <= 0.1 for x in pts]):.0f}%"
                )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"build_s": build_s, "records": rec}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
