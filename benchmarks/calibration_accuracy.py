"""Goal benchmark of issue 6: latency prediction from at most 25 profiled models.

On this machine, one thread, onnxruntime (CPU): the selector (:mod:`nnflash.calibration.select`) chooses at
most ``--budget`` models of the ``flash`` space (coverage, then active rounds), they are measured,
a cost model is fitted, and 100 random held-out models of the space are predicted. Target: at least
95% of them within +-10% and Spearman >= 0.95. The linear baseline and MACs alone are fitted on the
same measurements and reported side by side; then the roofline at budgets 5, 10, 15, 25, 50, and
25 random draws instead of the selector.

Measurement (the same for training and test models): ``benchmarks/direct_timing.py``, which
times models in this process and bypasses the agent (the product path, through the agent, is
``benchmarks/calibrate_cli.py``) -- every model exported to ONNX (opset 17), one onnxruntime
session with ``intra_op_num_threads=1`` and sequential execution, seeded input; models are loaded
30 at a time and visited in shuffled order ``--rounds`` (5) times; each visit runs 2 warm-up calls,
then calls timed with the wall clock (``time.perf_counter_ns``) for at least 7 runs and 0.04 s,
and its figure is their median; a model's latency is the *minimum* of its visit figures (the
least-disturbed visit; at least 0.2 s of timed runs in all). Results are cached (``--cache``,
default ``/tmp/nnflash-calibration-cache``) by spec id, so reruns only fit.

On a shared machine the figures carry the neighbours' load: models measured minutes apart (the test
set first, then each round of the selector) can be slowed by different amounts, which no cost model
can predict, so compare runs made under similar load.

Run: ``python benchmarks/calibration_accuracy.py`` (``--fresh`` re-measures everything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnflash.calibration import make_model
from nnflash.calibration.crossval import cross_validate, format_metrics, plot_predicted_vs_measured
from nnflash.calibration.select import select_specs
from nnflash.models.space import get_space

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.direct_timing import export_onnx, time_onnx  # noqa: E402

TEST_SEED = 20240611
POOL_SEED = 1


class Cache:
    """``{spec_id: latency_ms}`` on disk, measured on demand in interleaved batches."""

    def __init__(self, root: Path, threads: int, rounds: int, fresh: bool) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"latency-{platform.node() or 'host'}-t{threads}.json"
        self.threads = threads
        self.rounds = rounds
        self.data: dict[str, float] = {}
        if self.path.exists() and not fresh:
            self.data = json.loads(self.path.read_text())
        self.measured_now = 0
        self.seconds = 0.0

    def get(self, specs: list[Any]) -> np.ndarray:
        missing = [s for s in specs if s.spec_id not in self.data]
        if missing:
            t0 = time.perf_counter()
            paths = {s.spec_id: export_onnx(s, self.root / "onnx") for s in missing}
            for start in range(0, len(missing), 60):  # bounded memory: 60 sessions at a time
                chunk = {k: paths[k] for k in list(paths)[start : start + 60]}
                self.data.update(time_onnx(chunk, threads=self.threads, rounds=self.rounds))
            self.path.write_text(json.dumps(self.data, indent=0, sort_keys=True))
            self.measured_now += len(missing)
            self.seconds += time.perf_counter() - t0
        return np.array([self.data[s.spec_id] for s in specs])


def _fmt_row(name: str, m: dict[str, float]) -> str:
    return (
        f"{name:<26} {m['rmspe']:7.1f}% {m['mape']:7.1f}% {100 * m['within_5']:7.0f}% "
        f"{100 * m['within_10']:8.0f}% {m['spearman']:9.3f}"
    )


HEADER = f"{'':<26} {'RMSPE':>8} {'MAPE':>8} {'<=5%':>8} {'<=10%':>9} {'Spearman':>9}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=25)
    ap.add_argument("--budgets", default="5,10,15,25,50")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", default=os.environ.get("NNFLASH_BENCH_CACHE", "/tmp/nnflash-calibration-cache"))
    ap.add_argument("--fresh", action="store_true", help="Ignore cached measurements.")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    space = get_space("flash")
    cache = Cache(Path(args.cache), args.threads, args.rounds, args.fresh)
    test = space.sample(args.test, seed=TEST_SEED)
    test_ids = {s.spec_id for s in test}
    pool = [s for s in space.sample(args.pool, seed=POOL_SEED) if s.spec_id not in test_ids]
    print(
        f"flash space, onnxruntime, {args.threads} thread(s), {platform.processor() or platform.machine()}; "
        f"{len(test)} held-out test models, {len(pool)} candidates"
    )
    y_test = cache.get(test)
    print(f"test latencies: {y_test.min():.2f} .. {y_test.max():.2f} ms (median {np.median(y_test):.2f})")

    def measure(specs: list[Any]) -> list[float]:
        return list(cache.get(specs))

    budgets = sorted({int(b) for b in args.budgets.split(",")} | {args.budget})
    chosen_at: dict[int, tuple[list[Any], np.ndarray]] = {}
    for b in budgets:
        specs, y = select_specs(pool, b, seed=args.seed, measure=measure)
        chosen_at[b] = (specs, np.asarray(y))

    specs, y = chosen_at[args.budget]
    print(f"\n== budget {args.budget}: {len(specs)} profiled models, predicting {len(test)} held-out models")
    print(HEADER)
    results: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {}
    for name, kind in (("roofline", "roofline"), ("linear (non-negative)", "linear"), ("MACs alone", "macs")):
        model = make_model(kind).fit(specs, y)
        preds[name] = model.predict(test)
        results[name] = model.score(test, y_test)
        print(_fmt_row(name, results[name]))
        if kind == "roofline":
            roof = model
    goal = results["roofline"]["within_10"] >= 0.95 and results["roofline"]["spearman"] >= 0.95
    print(f"goal (>= 95% within 10%, Spearman >= 0.95): {'MET' if goal else 'NOT MET'}")
    cv = cross_validate(lambda: make_model("roofline"), specs, y, k=len(specs))
    print(f"roofline leave-one-out on the {len(specs)} profiled: {format_metrics(cv)}")
    print(
        "roofline parameters: "
        + json.dumps(
            {
                k: (
                    round(v, 3)
                    if isinstance(v, float)
                    else {kk: round(vv, 2) for kk, vv in v.items()}
                    if isinstance(v, dict)
                    else v
                )
                for k, v in roof.report().items()
            }
        )
    )

    print("\n== error as the budget grows (roofline; linear and MACs alone for comparison)")
    print(f"{'budget':<8}" + HEADER[8:] + "   linear <=10%   MACs <=10%")
    for b in budgets:
        s, yy = chosen_at[b]
        m = make_model("roofline").fit(s, yy).score(test, y_test)
        lin = make_model("linear").fit(s, yy).score(test, y_test) if len(s) >= 3 else None
        mac = make_model("macs").fit(s, yy).score(test, y_test)
        lin_s = f"{100 * lin['within_10']:12.0f}%" if lin else f"{'-':>13}"
        print(_fmt_row(str(b), m)[:8] + _fmt_row(str(b), m)[26:] + f"  {lin_s}  {100 * mac['within_10']:10.0f}%")

    rng = np.random.default_rng(args.seed + 99)
    rnd = [pool[i] for i in rng.choice(len(pool), args.budget, replace=False)]
    m = make_model("roofline").fit(rnd, cache.get(rnd)).score(test, y_test)
    print(f"\n== {args.budget} random draws instead of the selector (roofline)")
    print(HEADER)
    print(_fmt_row(f"random {args.budget}", m))

    plot = Path(args.cache) / "calibration_accuracy.png"
    plot_predicted_vs_measured(
        y_test,
        preds["roofline"],
        plot,
        title=f"flash, 1 thread: {len(specs)} profiled -> {len(test)} held out",
        labels={"MACs alone": (y_test, preds["MACs alone"])},
    )
    print(f"\nplot: {plot}")
    print(
        f"measured {cache.measured_now} new models in {cache.seconds:.0f} s; "
        f"total {time.perf_counter() - t_start:.0f} s"
    )
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
