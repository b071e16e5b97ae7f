"""The search core's figures: exact against our hierarchical SHGO and random search, side by side.

For one latency cost model and NN-Degree, over ``--levels`` latency limits spanning the space's
latency range (quantiles 1%..99% of sampled networks) plus a few with a parameter limit too and a
few with four limits (latency, parameters, MACs and peak memory):
the exact method's one-time table build, then per method the median and worst time per search,
regret (objective below the exact optimum, as a share of it), the share of levels within 0.5%,
the hit rate (exact optimum found) and violations (every design re-checked with the full model).
``random`` gets as many full-network evaluations as shgo made at that level. At margin 0.

    python benchmarks/search_methods.py --cost COST.json [--space flash] [--levels 50] [--against REV]

``--against REV`` adds the exact method of git revision ``REV`` (its ``search/exact.py`` and
``search/pareto.py``, with its own tables) as a row, timed side by side in the same run.

(``benchmarks/search.py`` is the full comparison, Optuna included.)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.calibration import load_model
from nnflash.calibration.synthetic import known_roofline
from nnflash.models.space import Space, get_space
from nnflash.search import (
    Deployment,
    Infeasible,
    Limits,
    Objective,
    SearchResult,
    build_tables,
    meets,
    recheck,
    search,
)
from nnflash.search.api import _finalize
from nnflash.search.memory import peak_memory_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", help="a saved latency cost model (default: the synthetic roofline)")
    ap.add_argument("--space", default="flash")
    ap.add_argument("--levels", type=int, default=50)
    ap.add_argument("--with-params", type=int, default=10, help="extra levels with a parameter limit too")
    ap.add_argument("--with-four", type=int, default=5, help="extra levels with latency, params, MACs and peak memory")
    ap.add_argument("--against", metavar="REV", help="also time the exact method of this git revision")
    args = ap.parse_args()
    space = get_space(args.space)
    if not isinstance(space, Space):
        ap.error(f"--space: {args.space} is not a space of cells (this benchmark compares the chain's methods)")
    model = load_model(args.cost) if args.cost else known_roofline(conv_algorithm="ort_nchwc16")
    dep = Deployment.from_model(model)
    objective = Objective.parse("nn-degree")
    t0 = time.perf_counter()
    tables = build_tables(space, [dep], objective)
    build_s = time.perf_counter() - t0
    sample = space.sample(2000, seed=0)
    lat = model.predict(sample)
    metrics = [
        space.metrics(*(np.array([[getattr(c, k) for c in s.cells]]) for k in ("depth", "width", "tc"))) for s in sample
    ]
    params = np.array([m["params"][0] for m in metrics])
    macs = np.array([m["macs"][0] for m in metrics])
    peak = np.array([peak_memory_mb(s) for s in sample])
    levels = [Limits(max_latency_ms=float(q)) for q in np.quantile(lat, np.linspace(0.01, 0.99, args.levels))]
    rng = np.random.default_rng(1)
    for q in rng.uniform(0.2, 0.95, args.with_params):
        levels.append(Limits(max_latency_ms=float(np.quantile(lat, q)), max_params=float(np.quantile(params, q * 0.6))))
    for q in np.random.default_rng(2).uniform(0.2, 0.95, args.with_four):
        levels.append(
            Limits(
                max_latency_ms=float(np.quantile(lat, q)),
                max_params=float(np.quantile(params, q * 0.7)),
                max_macs=float(np.quantile(macs, q * 0.8)),
                max_peak_memory_mb=float(np.quantile(peak, q)),
            )
        )
    kinds = {
        "latency limit only": slice(0, args.levels),
        "latency + params": slice(args.levels, args.levels + args.with_params),
        "latency + params + MACs + peak memory": slice(args.levels + args.with_params, len(levels)),
    }
    search(space, [dep], objective, levels[0], method="shgo", tables=tables)  # warm scipy's imports
    methods = ["exact", "shgo", "random"]
    if args.against:
        ref = _reference_exact(args.against)
        t0 = time.perf_counter()
        ref_tables = ref.ExactTables.build(space, [dep], objective)
        ref_build_s = time.perf_counter() - t0
        methods.append(f"exact@{args.against}")
    rows: dict[str, dict[str, list[float]]] = {m: {"time": [], "regret": [], "viol": []} for m in methods}
    for i, limits in enumerate(levels):
        print(f"level {i + 1}/{len(levels)}", file=sys.stderr, flush=True)
        ex = search(space, [dep], objective, limits, method="exact", tables=tables)
        sh = search(space, [dep], objective, limits, method="shgo", tables=tables)
        t0 = time.perf_counter()
        try:
            ra: Optional[SearchResult] = search(
                space, [dep], objective, limits, method="random", tables=tables, evaluations=sh.evaluations, seed=3
            )
        except Infeasible:  # none of its samples met the limits: no design, regret 100%
            ra = None
        ra_s = time.perf_counter() - t0
        best = ex.best.objective
        results = [("exact", ex), ("shgo", sh), ("random", ra)]
        if args.against:
            t0 = time.perf_counter()
            cands, n_eval = ref.exact_candidates(ref_tables, limits, 0.0, 1)
            designs = _finalize(cands, objective, limits, 0.0, 1)
            results.append((methods[-1], SearchResult(designs, "exact", time.perf_counter() - t0, 0.0, n_eval)))
        for name, res in results:
            rows[name]["time"].append(res.time_s if res is not None else ra_s)
            rows[name]["regret"].append((best - res.best.objective) / best if res is not None else 1.0)
            rows[name]["viol"].append(sum(not meets(recheck(d.spec, dep, limits)) for d in res.designs) if res else 0)
    print(f"space {space.name} ({space.count():.3g} networks), cost model {args.cost or 'synthetic roofline'} "
          f"({model.kind}, {getattr(model, 'conv_algorithm_', '')}), {len(levels)} limit levels, margin 0")  # fmt: skip
    print(
        f"exact table build: {build_s:.2f} s" + (f" (at {args.against}: {ref_build_s:.2f} s)" if args.against else "")
    )
    head = ("method", "median s", "worst s", "regret med", "worst", "<=0.5%", "hit", "viol")
    w = max(8, *(len(m) for m in methods))
    print(f"{{:{w}}} {{:>9}} {{:>8}} {{:>10}} {{:>7}} {{:>7}} {{:>5}} {{:>5}}".format(*head))
    for name, r in rows.items():
        reg = np.array(r["regret"])
        print(
            f"{name:{w}} {statistics.median(r['time']):9.3f} {max(r['time']):8.3f} {np.median(reg):10.4%} "
            f"{reg.max():7.2%} {np.mean(reg <= 0.005):7.0%} {np.mean(reg <= 1e-12):5.0%} {int(sum(r['viol'])):5d}"
        )
    for name, r in rows.items():
        t = np.array(r["time"])
        reg = np.array(r["regret"])
        parts = [
            f"{kind}: median {np.median(t[sl]):.3f} s, worst {t[sl].max():.3f} s, "
            f"within 0.5% {np.mean(reg[sl] <= 0.005):.0%}"
            for kind, sl in kinds.items()
            if len(t[sl])
        ]
        print(f"{name}: " + "; ".join(parts))


def _reference_exact(rev: str) -> Any:
    """``search/exact.py`` of git revision ``rev`` as a module, over that revision's ``search/pareto.py``."""
    root = Path(__file__).resolve().parents[1]
    for name in ("pareto", "exact"):
        src = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:search/{name}.py"], capture_output=True, text=True, check=True
        ).stdout
        src = src.replace("from nnflash.search.pareto import", "from _reference_pareto import")
        module = types.ModuleType(f"_reference_{name}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        exec(compile(src, f"{rev}:search/{name}.py", "exec"), module.__dict__)
    return sys.modules["_reference_exact"]


if __name__ == "__main__":
    main()
