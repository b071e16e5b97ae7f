"""Issue 15: nnflash held against NAS-Bench-201's answer key (trained accuracy and Raspberry Pi 4 latency
of all 15,625 cells, ``../shared/data/nb201/``; see its README for the sources).

1. **Latency**: nnflash's own calibration (``calibration.workflow.calibrate``: coverage, then active
   rounds, the roofline by default) chooses 10, 25 or 50 of a pool of 3,000 networks drawn from the
   ``nb201`` space (what ``nnflash calibrate --space nb201`` does with its defaults); their "measurement"
   is a lookup in the Pi 4 column. The fitted model predicts all 15,625: share within +-10% and +-5%,
   RMSPE, Spearman; beside it the linear and MACs models from the same 25, FLOPs alone as a ranking,
   and **twins**: networks whose effective cells are identical for nnflash (they differ only on dead
   edges) predicted by the median of their twins' measurements. It is not a noise floor: the
   column's own export computes the operations after a ``none`` edge (see docs/nb201.md), so twins
   differ in work there; it shows how much of the column nnflash's effective network cannot see.
2. **Accuracy from 25 trainings**: ``accuracy select`` (``select_for_dataset``: spread over NN-Degree
   and size, pool 2,000) picks 25; their NAS-Bench-201 test accuracies are the "trainings". The
   predictors of ``calibration.accuracy`` -- ``flash`` (NN-Degree curve), ``nnmass`` (NN-Mass curve),
   ``multi`` -- predict the rest: Spearman, Kendall, top-1% recall (of the truly best 1%, the share
   that the prediction also puts in its best 1%). No CIFAR images are available here, so the
   proxies that need a data batch (NASWOT, grad_norm, snip, jacob_cov) cannot be computed: ``multi``
   runs on its structural features and synflow (whose input is all ones, no data); the four missing
   proxies enter as constants, which the ridge gives exactly zero weight (a constant column
   standardizes to zero), the same as leaving them out. Synflow takes about 0.15 s a network here, so
   it (and ``multi``) is evaluated on a uniform sample of 1,000 networks; everything else on all
   15,625 and on the same sample. Baselines: params, FLOPs, synflow, and a random forest
   (scikit-learn, 500 trees) on a one-hot encoding of the 6 edges fitted on the same 25.
3. **Search against the answer key** (:func:`bench_search`): the roofline from 25 of part 1 and the
   25 networks of part 2 drive ``nnflash.search.search`` on space ``nb201`` (exact enumeration, what
   ``nnflash search --space nb201`` runs) at 24 latency limits log-spaced from the fastest network
   with a path (2.53 ms; the 341 constant networks below it are 10% networks, where any search is
   trivially right) to the slowest (98.9 ms), at margin 0 and at the default margin (the model's
   cross-validated p90, as the CLI sets it). Per limit: the recommendation's true accuracy and
   latency, its predicted latency, the true best accuracy under the true limit, the regret in
   points, whether it is truly within. The main predictor is ``flash`` (NN-Degree curve), the one
   of part 2 that scores all 15,625 and that ``nnflash search --accuracy`` takes; ``multi`` needs
   synflow of every network (about 1 s each here, hours for all), so it is run on part 2's uniform
   sample of 1,000 (the search restricted to those, ``build_tables(specs=...)``, against the true
   best of the sample), and a ``multi`` on the structural features alone (proxies constant) on all
   15,625 through ``Objective.from_scores``. Hypervolume (accuracy up, latency down) in the box
   accuracy >= 10% (chance, the constant networks), latency <= 98.9 ms (the column's maximum), of:
   the recommendations, the predicted Pareto front (``pareto_front``) at its true values, and 100
   random networks' true front (median over 100 seeds), each over the true front's.

Run once: ``nice -n 5 .venv/bin/python -u benchmarks/nb201.py [--only latency|accuracy|search] [--out results.json]``
(the parts can run side by side; each takes tens of minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr

from nnflash.calibration.accuracy import make_accuracy_model
from nnflash.calibration.workflow import calibrate
from nnflash.controller.accuracy import select_for_dataset
from nnflash.models.metrics import compute_metrics
from nnflash.models.nb201 import OPS, Nb201Spec
from nnflash.models.proxies import PROXY_NAMES
from nnflash.models.space import get_space

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nb201" / "nb201_cifar10_raspi4.csv"
POOL = 3000  # nnflash calibrate's default --pool
SYNFLOW_SAMPLE = 1000


def load(path: Path) -> tuple[list[Nb201Spec], np.ndarray, np.ndarray]:
    specs, lat, acc = [], [], []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            specs.append(Nb201Spec(arch=row["arch"]))
            lat.append(float(row["raspi4_tflite_latency_ms"]))
            acc.append(float(row["cifar10_test_accuracy_200ep"]) / 100.0)
    return specs, np.array(lat), np.array(acc)


def latency_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    e = p / y - 1
    return {
        "within_10": float(np.mean(np.abs(e) <= 0.10)),
        "within_5": float(np.mean(np.abs(e) <= 0.05)),
        "rmspe": float(np.sqrt(np.mean(e**2))),
        "spearman": float(spearmanr(y, p).statistic),
        "n": float(len(y)),
    }


def top_recall(y: np.ndarray, p: np.ndarray, share: float = 0.01, seed: int = 0) -> float:
    k = max(1, int(round(share * len(y))))
    jitter = np.random.default_rng(seed).random(len(p)) * 1e-12  # ties (curves of few distinct values)
    true_top = set(np.argsort(-y, kind="stable")[:k].tolist())
    pred_top = set(np.argsort(-(p + jitter), kind="stable")[:k].tolist())
    return len(true_top & pred_top) / k


def rank_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "spearman": float(spearmanr(y, p).statistic),
        "kendall": float(kendalltau(y, p).statistic),
        "top1_recall": top_recall(y, p),
        "n": float(len(y)),
    }


def synflow(spec: Nb201Spec) -> float:
    """Synflow (all-ones input, |weights|), models.proxies' definition; 0 for a constant network
    (nothing the output computes from the input has a weight)."""
    import torch

    from nnflash.models.proxies import _synflow

    if not spec.graph.has_path:
        return 0.0
    return _synflow(spec, torch.ones((1, *spec.input_shape)), 0)


def fmt_row(name: str, m: dict[str, float], keys: list[str]) -> str:
    cells = []
    for k in keys:
        v = m.get(k, math.nan)
        cells.append(f"{100 * v:6.1f}%" if k.startswith("within") or k == "rmspe" else f"{v:7.3f}")
    return f"| {name:<42} | " + " | ".join(cells) + f" | {int(m.get('n', 0)):>6} |"


def cache_layer_records() -> None:
    """Compute each spec's layer records once per process (the calibration's selection, its bootstrap
    rounds and the predictions of all 15,625 would otherwise rebuild them many times)."""
    import importlib
    from functools import lru_cache

    features = importlib.import_module("nnflash.calibration.features")  # the package exports a function too
    plain = features.layer_records
    cached = lru_cache(maxsize=None)(lambda spec: tuple(plain(spec)))

    def layer_records(x: Any) -> list[Any]:
        return list(cached(x)) if isinstance(x, Nb201Spec) else plain(x)

    features.layer_records = layer_records  # type: ignore[assignment]


CONFIGS = (("roofline", 10), ("roofline", 25), ("roofline", 50), ("linear", 25), ("macs", 25))


def bench_latency(
    specs: list[Nb201Spec], lat: np.ndarray, out: dict[str, Any], configs: tuple[tuple[str, int], ...] = CONFIGS
) -> None:
    by_id = {s.spec_id: float(v) for s, v in zip(specs, lat)}
    pool = get_space("nb201").sample(POOL, seed=0)

    def profile(chosen: list[Any]) -> list[dict[str, Any]]:
        return [{"spec_id": s.spec_id, "status": "ok", "latency_ms_median": by_id[s.spec_id]} for s in chosen]

    rows: dict[str, dict[str, float]] = {}
    const = np.array([not s.graph.has_path for s in specs])
    for model, budget in configs:
        t0 = time.perf_counter()
        cal = calibrate(pool, budget, profile, model=model, seed=0)
        pred = np.asarray(cal.model.predict(specs), float)
        m = latency_metrics(lat, pred)
        m["fit_s"] = time.perf_counter() - t0
        m["cv_within_10"] = float(cal.cv.get("within_10", math.nan))
        m["within_10_path"] = float(np.mean(np.abs(pred[~const] / lat[~const] - 1) <= 0.10))
        m["spearman_path"] = float(spearmanr(lat[~const], pred[~const]).statistic)
        m["chosen_constant"] = float(sum(1 for s in cal.specs if not s.graph.has_path))
        rows[f"{model} from {budget}"] = m
        print(f"  {model} from {budget}: {m}", file=sys.stderr, flush=True)
    macs = np.array([compute_metrics(s)["macs"] for s in specs], float)
    rows["FLOPs alone (ranking only)"] = {"spearman": float(spearmanr(lat, macs).statistic), "n": float(len(lat))}
    # twins (identical effective cells for nnflash) predicted by the median of the other twins
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, s in enumerate(specs):
        if s.graph.has_path:
            groups[s.graph.live_ops()].append(i)
    idx, oracle = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        for i in members:
            idx.append(i)
            oracle.append(float(np.median([lat[j] for j in members if j != i])))
    idx_a = np.array(idx)
    rows["twins: median of the same effective cell"] = latency_metrics(lat[idx_a], np.array(oracle))
    out["latency"] = rows
    print("\n### 1. Latency on the Raspberry Pi 4 (TFLite), predicted for all 15,625\n")
    keys = ["within_10", "within_5", "rmspe", "spearman"]
    print("| model (calibration budget) | within +-10% | within +-5% | RMSPE | Spearman | n |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(fmt_row(name, m, keys))
    print(
        f"\nwithout the {int(const.sum())} constant networks: "
        + ", ".join(
            f"{k}: within +-10% {100 * m['within_10_path']:.1f}%, Spearman {m['spearman_path']:.3f}"
            for k, m in rows.items()
            if "within_10_path" in m
        )
    )
    print(f"twins: over the {len(idx)} networks whose effective cell has a twin")


def one_hot(specs: list[Nb201Spec]) -> np.ndarray:
    x = np.zeros((len(specs), 6 * len(OPS)))
    for i, s in enumerate(specs):
        for e, op in enumerate(s.ops):
            x[i, 5 * e + OPS.index(op)] = 1.0
    return x


def bench_accuracy(
    specs: list[Nb201Spec], acc: np.ndarray, out: dict[str, Any], synflow_sample: int = SYNFLOW_SAMPLE
) -> None:
    from sklearn.ensemble import RandomForestRegressor

    index = {s.spec_id: i for i, s in enumerate(specs)}
    chosen = select_for_dataset("cifar10", 25, space_name="nb201", pool=2000, seed=0)
    train = np.array([index[s.spec_id] for s in chosen])
    y25 = acc[train]
    print(f"  25 selected: accuracy {100 * y25.min():.1f}..{100 * y25.max():.1f}%", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(specs), synflow_sample, replace=False))
    t0 = time.perf_counter()
    need = sorted(set(sample.tolist()) | set(train.tolist())) if synflow_sample else []
    syn = {i: synflow(specs[i]) for i in need}
    print(f"  synflow on {len(need)} networks: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    def proxies(ix: np.ndarray) -> list[dict[str, float]]:
        # synflow computed; the data-batch proxies are constants (zero weight in the ridge, see the docstring)
        return [{**dict.fromkeys(PROXY_NAMES, 1.0), "synflow": max(syn[int(i)], 1e-300)} for i in ix]

    metrics = [compute_metrics(s) for s in specs]
    params = np.array([m["params"] for m in metrics], float)
    macs = np.array([m["macs"] for m in metrics], float)
    preds_all: dict[str, np.ndarray] = {}
    for kind in ("flash", "nnmass"):
        model = make_accuracy_model(kind).fit([specs[i] for i in train], y25)
        preds_all[f"{kind} (25)"] = np.asarray(model.predict(specs), float)
    rf = RandomForestRegressor(n_estimators=500, random_state=0).fit(one_hot([specs[i] for i in train]), y25)
    preds_all["random forest, one-hot edges (25)"] = rf.predict(one_hot(specs))
    preds_all["params (no training)"] = params
    preds_all["FLOPs (no training)"] = macs
    preds_sample = {k: v[sample] for k, v in preds_all.items()}
    if synflow_sample:
        multi = make_accuracy_model("multi").fit([specs[i] for i in train], y25, proxies=proxies(train))
        preds_sample["multi: structure + synflow (25)"] = np.asarray(
            multi.predict([specs[i] for i in sample], proxies=proxies(sample)), float
        )
        preds_sample["synflow (no training)"] = np.array([syn[int(i)] for i in sample])
    rows_all = {k: rank_metrics(acc, v) for k, v in preds_all.items()}
    rows_sample = {k: rank_metrics(acc[sample], v) for k, v in preds_sample.items()} if len(sample) else {}
    out["accuracy"] = {"all": rows_all, "sample": rows_sample, "train_spec_ids": [s.spec_id for s in chosen]}
    keys = ["spearman", "kendall", "top1_recall"]
    for title, rows in (("all 15,625", rows_all), (f"uniform sample of {synflow_sample}", rows_sample)):
        if rows is rows_sample and not len(sample):
            continue
        print(f"\n### 2. Accuracy (CIFAR-10, 200 epochs) from 25 trainings: {title}\n")
        print("| predictor | Spearman | Kendall | top-1% recall | n |")
        print("|---|---|---|---|---|")
        for name, m in rows.items():
            print(fmt_row(name, m, keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None, help="Also write the figures as JSON.")
    ap.add_argument("--only", choices=["latency", "accuracy", "search"], default=None, help="Run one part.")
    ap.add_argument(
        "--synflow-cache", type=Path, default=None, help="Search: JSON of synflow by spec id (read, and written)."
    )
    ap.add_argument("--synflow-sample", type=int, default=SYNFLOW_SAMPLE, help="Networks to run synflow on (0: none).")
    ap.add_argument(
        "--config", action="append", default=None, help="Latency: MODEL:BUDGET (repeatable; default: all five)."
    )
    args = ap.parse_args()
    cache_layer_records()
    configs = CONFIGS
    if args.config:
        configs = tuple((c.split(":")[0], int(c.split(":")[1])) for c in args.config)
    specs, lat, acc = load(args.data)
    print(f"{len(specs)} networks; {sum(not s.graph.has_path for s in specs)} without a path", file=sys.stderr)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args.only in (None, "latency"):
        bench_latency(specs, lat, out, configs)
    if args.only in (None, "accuracy"):
        bench_accuracy(specs, acc, out, args.synflow_sample)
    if args.only in (None, "search"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.nb201_search import bench_search

        bench_search(specs, lat, acc, out, synflow=synflow, synflow_cache=args.synflow_cache)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
