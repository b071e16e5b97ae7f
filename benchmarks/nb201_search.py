"""Part 3 of ``benchmarks/nb201.py``: ``nnflash search`` on space nb201 against NAS-Bench-201's answer key.

What it runs and why is in ``benchmarks/nb201.py``'s docstring (item 3) and docs/nb201.md. Run through
it: ``nice -n 5 .venv/bin/python -u benchmarks/nb201.py --only search [--synflow-cache syn.json]``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from nnflash.calibration.accuracy import make_accuracy_model
from nnflash.calibration.workflow import calibrate
from nnflash.controller.accuracy import select_for_dataset
from nnflash.models.nb201 import Nb201Spec
from nnflash.models.proxies import PROXY_NAMES
from nnflash.models.space import get_space
from nnflash.search import Deployment, Infeasible, Limits, Objective, build_tables, default_margin, pareto_front, search

POOL = 3000  # as part 1 (nnflash calibrate's default --pool)
N_LIMITS = 24
SAMPLE = 1000  # part 2's uniform sample (the networks synflow runs on)
ACC_FLOOR = 0.10  # the hypervolume box: chance accuracy (the constant networks) ...
RANDOM_SEEDS = 100


def hypervolume(lat: np.ndarray, acc: np.ndarray, lat_ceiling: float, acc_floor: float = ACC_FLOOR) -> float:
    """Area (ms x accuracy) dominated by the points inside the box ``latency <= lat_ceiling``,
    ``accuracy >= acc_floor`` (latency down, accuracy up)."""
    keep = (lat <= lat_ceiling) & (acc > acc_floor)
    if not keep.any():
        return 0.0
    x, y = lat[keep], acc[keep]
    order = np.argsort(x, kind="stable")
    x, best = x[order], np.maximum.accumulate(y[order])
    widths = np.diff(np.append(x, lat_ceiling))
    return float(np.sum(widths * (best - acc_floor)))


def pareto_count(lat: np.ndarray, acc: np.ndarray) -> int:
    """Networks no other network beats on both (at most as slow and more accurate, or faster and as accurate)."""
    order = np.lexsort((-acc, lat))
    n, best = 0, -math.inf
    for o in order:
        if acc[o] > best:
            n, best = n + 1, float(acc[o])
    return n


def _latency_model(specs: list[Nb201Spec], lat: np.ndarray) -> tuple[Any, dict[str, float]]:
    """Part 1's roofline from 25 (same pool, seed and profile: a lookup in the column)."""
    by_id = {s.spec_id: float(v) for s, v in zip(specs, lat)}
    pool = get_space("nb201").sample(POOL, seed=0)

    def profile(chosen: list[Any]) -> list[dict[str, Any]]:
        return [{"spec_id": s.spec_id, "status": "ok", "latency_ms_median": by_id[s.spec_id]} for s in chosen]

    cal = calibrate(pool, 25, profile, model="roofline", seed=0)
    cal.model.metadata_["cv"] = dict(cal.cv)  # what `nnflash calibrate --out` saves: the default margin reads it
    return cal.model, dict(cal.cv)


def _run_limits(
    tables: Any,
    dep: Deployment,
    objective: Objective,
    limits: np.ndarray,
    margin: float,
    specs: Sequence[Nb201Spec],
    lat: np.ndarray,
    acc: np.ndarray,
) -> list[dict[str, Any]]:
    """One row per limit: the search's recommendation against the true best of ``specs``."""
    index = {s.spec_id: i for i, s in enumerate(specs)}
    space = get_space("nb201")
    rows = []
    for limit in limits:
        row: dict[str, Any] = {"limit_ms": float(limit), "true_best": float(acc[lat <= limit].max())}
        try:
            res = search(space, [dep], objective, Limits(max_latency_ms=float(limit)), margin=margin, tables=tables)
        except Infeasible:
            row.update(spec_id=None, regret=None, within=None)
            rows.append(row)
            continue
        d = res.designs[0]
        i = index[d.spec_id]
        row.update(
            spec_id=d.spec_id,
            arch=d.spec.arch,
            predicted_accuracy=d.accuracy,
            predicted_latency_ms=d.latency_ms,
            true_accuracy=float(acc[i]),
            true_latency_ms=float(lat[i]),
            regret=100 * (row["true_best"] - float(acc[i])),
            within=bool(lat[i] <= limit),
        )
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], lat_ceiling: float, hv_true: float) -> dict[str, float]:
    got = [r for r in rows if r["spec_id"] is not None]
    reg = np.array([r["regret"] for r in got])
    return {
        "median_regret": float(np.median(reg)) if len(reg) else math.nan,
        "max_regret": float(reg.max()) if len(reg) else math.nan,
        "within": float(np.mean([r["within"] for r in got])) if got else math.nan,
        "no_design": float(len(rows) - len(got)),
        "hv_ratio": hypervolume(
            np.array([r["true_latency_ms"] for r in got]), np.array([r["true_accuracy"] for r in got]), lat_ceiling
        )
        / hv_true,
    }


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}\n")
    print(
        "| limit ms | recommended (true acc, true ms, predicted ms) | true best under limit | regret (points) "
        "| within |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        if r["spec_id"] is None:
            rec, reg, ok = "no design", "-", "-"
        else:
            rec = f"{100 * r['true_accuracy']:.2f}%, {r['true_latency_ms']:.2f}, {r['predicted_latency_ms']:.2f}"
            reg, ok = f"{r['regret']:.2f}", "yes" if r["within"] else "**no**"
        print(f"| {r['limit_ms']:.2f} | {rec} | {100 * r['true_best']:.2f}% | {reg} | {ok} |")


def _synflow_scores(
    specs: list[Nb201Spec], need: list[int], fn: Callable[[Nb201Spec], float], cache: Optional[Path]
) -> dict[str, float]:
    known: dict[str, float] = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    t0, todo = time.perf_counter(), [i for i in need if specs[i].spec_id not in known]
    for k, i in enumerate(todo):
        known[specs[i].spec_id] = fn(specs[i])
        if cache is not None and (k % 50 == 49 or k == len(todo) - 1):
            cache.write_text(json.dumps(known))
    if todo:
        print(f"  synflow on {len(todo)} networks: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return known


def bench_search(
    specs: list[Nb201Spec],
    lat: np.ndarray,
    acc: np.ndarray,
    out: dict[str, Any],
    *,
    synflow: Callable[[Nb201Spec], float],
    synflow_cache: Optional[Path] = None,
) -> None:
    t_start = time.perf_counter()
    space = get_space("nb201")
    model, cv = _latency_model(specs, lat)
    dep = Deployment.from_model(model)
    default = default_margin(dep)
    print(f"  latency model: roofline from 25, cv p90 {cv['p90']:.3f}", file=sys.stderr, flush=True)
    index = {s.spec_id: i for i, s in enumerate(specs)}
    chosen = select_for_dataset("cifar10", 25, space_name="nb201", pool=2000, seed=0)  # part 2's 25
    train = np.array([index[s.spec_id] for s in chosen])
    train_specs = [specs[i] for i in train]
    flash = make_accuracy_model("flash").fit(train_specs, acc[train])
    nnmass = make_accuracy_model("nnmass").fit(train_specs, acc[train])
    const = dict.fromkeys(PROXY_NAMES, 1.0)
    multi_struct = make_accuracy_model("multi").fit(train_specs, acc[train], proxies=[const] * len(train))
    t0 = time.perf_counter()
    obj_flash = Objective.from_predictor(flash)
    tables = build_tables(space, [dep], obj_flash, specs=specs)
    print(f"  tables of all {len(specs)}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    pred_lat = tables.latency_ms[0]
    path = np.array([s.graph.has_path for s in specs])
    limits = np.geomspace(float(lat[path].min()), float(lat.max()), N_LIMITS)
    ceiling = float(lat.max())
    hv_true = hypervolume(lat, acc, ceiling)

    configs: dict[str, tuple[Any, Objective]] = {"flash: NN-Degree curve (25)": (tables, obj_flash)}
    o = Objective.from_predictor(nnmass)
    configs["nnmass: NN-Mass curve (25)"] = (tables.with_objective(o), o)
    ms = np.asarray(multi_struct.predict(specs, proxies=[const] * len(specs)), float)
    o = Objective.from_scores("multi-structure", {s.spec_id: float(v) for s, v in zip(specs, ms)})
    configs["multi, structure only (25)"] = (tables.with_objective(o), o)
    o = Objective.from_scores("true", {s.spec_id: float(v) for s, v in zip(specs, acc)})
    configs["true accuracy (diagnostic: latency model alone)"] = (tables.with_objective(o), o)

    results: dict[str, Any] = {}
    summaries: dict[str, dict[str, dict[str, float]]] = {}
    for name, (tb, obj) in configs.items():
        for margin in (0.0, default):
            rows = _run_limits(tb, dep, obj, limits, margin, specs, lat, acc)
            results[f"{name} @ {margin:.3f}"] = rows
            summaries.setdefault(name, {})[f"{margin:.3f}"] = _summary(rows, ceiling, hv_true)
        print(f"  {name}: {summaries[name]}", file=sys.stderr, flush=True)

    # multi with synflow: part 2's uniform sample of 1,000 (synflow of all 15,625 would take hours)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(specs), SAMPLE, replace=False))  # part 2's sample (same seed)
    syn = _synflow_scores(specs, sorted(set(sample.tolist()) | set(train.tolist())), synflow, synflow_cache)

    def proxies(ix: np.ndarray) -> list[dict[str, float]]:
        return [{**const, "synflow": max(syn[specs[int(i)].spec_id], 1e-300)} for i in ix]

    multi = make_accuracy_model("multi").fit(train_specs, acc[train], proxies=proxies(train))
    mp = np.asarray(multi.predict([specs[i] for i in sample], proxies=proxies(sample)), float)
    s_specs, s_lat, s_acc = [specs[i] for i in sample], lat[sample], acc[sample]
    s_limits = limits[limits >= s_lat[path[sample]].min()]
    s_hv = hypervolume(s_lat, s_acc, ceiling)
    o = Objective.from_scores("multi", {s.spec_id: float(v) for s, v in zip(s_specs, mp)})
    s_tables = build_tables(space, [dep], o, specs=s_specs)
    sample_configs = {
        "multi: structure + synflow (25), on the 1,000": (s_tables, o),
        "flash (25), on the 1,000": (s_tables.with_objective(obj_flash), obj_flash),
    }
    for name, (tb, obj) in sample_configs.items():
        for margin in (0.0, default):
            rows = _run_limits(tb, dep, obj, s_limits, margin, s_specs, s_lat, s_acc)
            results[f"{name} @ {margin:.3f}"] = rows
            summaries.setdefault(name, {})[f"{margin:.3f}"] = _summary(rows, ceiling, s_hv)
        print(f"  {name}: {summaries[name]}", file=sys.stderr, flush=True)

    # fronts: the predicted front at its true values, 100 random networks, the true front
    front = pareto_front(space, [dep], obj_flash, tables=tables)
    fi = np.array([index[d.spec_id] for d in front])
    hv_front = hypervolume(lat[fi], acc[fi], ceiling) / hv_true
    o = configs["multi, structure only (25)"][1]
    front_m = pareto_front(space, [dep], o, tables=configs["multi, structure only (25)"][0])
    fm = np.array([index[d.spec_id] for d in front_m])
    hv_front_m = hypervolume(lat[fm], acc[fm], ceiling) / hv_true
    rand = []
    for seed in range(RANDOM_SEEDS):
        ix = np.random.default_rng(seed).choice(len(specs), 100, replace=False)
        rand.append(hypervolume(lat[ix], acc[ix], ceiling) / hv_true)
    rand_a = np.array(rand)

    print("\n### 3. Search against the answer key (nnflash search, space nb201, exact enumeration)\n")
    print(
        f"latency: roofline from 25 (part 1); its cross-validated p90 error {cv['p90']:.3f} is the default margin "
        f"({100 * default:.1f}%). {N_LIMITS} limits log-spaced {limits[0]:.2f}..{limits[-1]:.2f} ms. "
        f"True front: {pareto_count(lat, acc)} Pareto-optimal networks; hypervolume box: accuracy >= "
        f"{100 * ACC_FLOOR:.0f}%, latency <= {ceiling:.2f} ms."
    )
    for margin in (0.0, default):
        _print_rows(
            f"flash predictor (NN-Degree curve from part 2's 25), margin {100 * margin:.1f}%:",
            results[f"flash: NN-Degree curve (25) @ {margin:.3f}"],
        )
    print(
        "\nSummary (regret in accuracy points; hypervolume of the recommendations' true points over the true front's)\n"
    )
    print("| objective | margin | median regret | max regret | truly within | no design | hypervolume ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, by_margin in summaries.items():
        for margin, m in by_margin.items():
            print(
                f"| {name} | {100 * float(margin):.1f}% | {m['median_regret']:.2f} | {m['max_regret']:.2f} | "
                f"{100 * m['within']:.0f}% | {int(m['no_design'])} | {m['hv_ratio']:.3f} |"
            )
    print(
        f"\n(the 1,000 rows: {len(s_limits)} limits of the 24 (those at or above the sample's fastest network with "
        "a path), true best and hypervolume within the sample)"
    )
    print(
        f"\nHypervolume over the true front's ({pareto_count(lat, acc)} networks): predicted front of flash "
        f"({len(front)} designs) at true values {hv_front:.3f}; of multi, structure only ({len(front_m)} designs) "
        f"{hv_front_m:.3f}; 100 random networks (median of {RANDOM_SEEDS} seeds) {np.median(rand_a):.3f} "
        f"(quartiles {np.quantile(rand_a, 0.25):.3f}..{np.quantile(rand_a, 0.75):.3f})"
    )
    within_10 = 100 * np.mean(np.abs(pred_lat / lat - 1) <= 0.1)
    print(f"predicted vs true latency over all {len(specs)}: within +-10% {within_10:.1f}%")
    print(f"(search part: {time.perf_counter() - t_start:.0f} s)")
    out["search"] = {
        "limits_ms": limits.tolist(),
        "default_margin": default,
        "cv": cv,
        "summaries": summaries,
        "rows": results,
        "hv_true": hv_true,
        "hv_predicted_front_flash": hv_front,
        "hv_predicted_front_multi_structure": hv_front_m,
        "hv_random100": rand,
        "true_front_size": pareto_count(lat, acc),
    }
