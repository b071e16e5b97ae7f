"""Issue 16's figures for `nnflash run` on the built-in `local` device.

1. Wall time of `nnflash run --quick` by stage (calibrate, search, verify, refit, report), from its
   --json output, in a fresh database (or the one given).
2. Recommendation hit rate over >= 10 latency limits (log-spaced across the latency range the
   calibration measured), the loop run on the same database (so the calibration is reused if its
   spot check passes): the share of recommended designs whose measured latency meets the limit,
   the median |predicted / measured - 1| on them, and the regret the margin costs (the objective
   lost against the best design under the same limit searched without margin, relative), for the
   first round (before any refit) and the last (after the loop's refits).

Usage::

    .venv/bin/python benchmarks/run_loop.py [--db DIR/n.db] [--limits 10] [--full] [--busy-ok] [--skip-quick]

Timings on a shared machine are noisy: the script prints the load average around each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def device_busy(db: Path) -> str:
    """What else kept the device busy while it measured: per visit, the share of the measured CPUs'
    time that other processes used (the agent's ``foreign_share``, from ``/proc/stat``), and the
    measurements by status."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT status, json_extract(summary_json, '$.disturbance.visit.foreign_share') FROM measurements"
        ).fetchall()
    finally:
        con.close()
    counts: dict[str, int] = {}
    for status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    shares = np.array([float(v) for _, v in rows if v is not None])
    if not len(shares):
        return f"measurements {counts}; no visit recorded other processes' CPU time"
    p50, p90 = np.percentile(shares, [50, 90])
    return (
        f"measurements {counts}; other processes' share of the measured CPUs during a visit: "
        f"median {p50:.1%}, p90 {p90:.1%}, max {shares.max():.1%} ({len(shares)} visits)"
    )


def _figures(designs: list) -> dict:
    ok = [v for v in designs if v.measured_ms is not None]
    hits = [v for v in ok if v.meets_limit]
    errs = [abs(v.prediction_error) for v in ok if v.prediction_error is not None]
    regret = [
        (v.objective_no_margin - v.design.objective) / abs(v.objective_no_margin)
        for v in designs
        if v.objective_no_margin not in (None, 0)
    ]
    return {
        "designs": len(designs),
        "measured": len(ok),
        "hit_rate": len(hits) / len(ok) if ok else float("nan"),
        "median_abs_err": float(np.median(errs)) if errs else float("nan"),
        "median_regret": float(np.median(regret)) if regret else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="Results database (default: a fresh one in a temp folder).")
    ap.add_argument("--limits", type=int, default=10, help="Latency limits for the hit rate (>= 10).")
    ap.add_argument("--busy-ok", action="store_true", help="Keep visits disturbed by other processes.")
    ap.add_argument(
        "--full",
        action="store_true",
        help="Hit rate with the full plan (25 models, 5 passes; nnflash run without --quick) instead of --quick's.",
    )
    ap.add_argument("--skip-quick", action="store_true", help="Do not time run --quick (reuse --db's calibration).")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nnflash-runloop-"))
    db = Path(args.db) if args.db else work / "n.db"
    extra = ["--busy-ok"] if args.busy_ok else []
    print(f"database {db}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

    if not args.skip_quick:
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "nnflash.controller.cli", "run", "--quick", "--json", "--db", str(db)]
            + ["--out", str(work / "quick")]
            + extra,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"run --quick failed ({res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
        out = json.loads(res.stdout)
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in out["stage_s"].items())
        print(f"run --quick: {wall:.0f} s wall ({stages}); {len(out['rounds'])} round(s); ", end="")
        print(f"measurements {out['measurements']}; load {os.getloadavg()[0]:.1f} at end")

    from nnflash.controller.commands.common import devices_from, load_inventory
    from nnflash.controller.runloop import FULL, QUICK, RunRequest, latency_grid, run_loop
    from nnflash.models.space import get_space

    device = devices_from(load_inventory(None), "local")[0]
    base = RunRequest(
        device=device,
        space=get_space("flash"),
        db_path=str(db),
        out_dir=str(work / "bench"),
        artifacts_dir=str(db.parent / f"{db.stem}-artifacts"),
        plan=FULL if args.full else QUICK,
        measure={"disturbed_share_max": None} if args.busy_ok else {},
    )
    t0 = time.perf_counter()
    # the grid from the stored calibration: run_loop with no limit computes it; here we need >= 10
    from nnflash.controller.runloop import ensure_cost_model

    state = ensure_cost_model(base, 1, log=lambda s: print("  " + s))
    limits = latency_grid([state], str(db), "local", "onnxruntime", "fp32", max(10, args.limits))
    import dataclasses

    req = dataclasses.replace(base, latency_limits_ms=tuple(limits))
    result = run_loop(req, log=lambda s: print("  " + s))
    wall = time.perf_counter() - t0
    first, last = _figures(result.rounds[0].designs), _figures(result.final.designs)
    print(
        f"\nplan {base.plan.name}: {len(limits)} latency limits {limits[0]:.2f} .. {limits[-1]:.2f} ms; "
        f"{len(result.rounds)} round(s), {wall:.0f} s"
    )
    print(f"{'':24}{'designs':>8}{'measured':>9}{'hit rate':>9}{'med |err|':>10}{'regret':>8}{'margin':>8}")
    for name, f, m in (
        ("before refits (round 1)", first, result.rounds[0].margin),
        ("after the loop", last, result.final.margin),
    ):
        print(
            f"{name:24}{f['designs']:>8}{f['measured']:>9}{f['hit_rate']:>9.0%}{f['median_abs_err']:>10.1%}"
            f"{f['median_regret']:>8.1%}{m:>8.1%}"
        )
    print(f"stage times: {', '.join(f'{k} {v:.0f} s' for k, v in result.stage_s.items())}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    print(device_busy(db))


if __name__ == "__main__":
    main()
