"""Goal benchmark 1 of issue 13: how well 25 trained networks predict the accuracy of the rest.

Dataset Fashion-MNIST (the embedded default, or ``--data-dir``), its default space
(``flash-fmnist``, 1x28x28), protocol ``quick`` (20,000 training images, 3 epochs; see
``nnflash.models.training_protocol``). Steps:

1. ``--budget`` (25) networks chosen by ``accuracy select``'s spread over NN-Degree and size, from
   ``--pool`` (2,000) draws of the space with seed 0;
2. ``--held-out`` (30) networks drawn at random from the space (seed 12345), none of the chosen;
3. every one trained with seed 0, and ``--noise-specs`` (5) of the chosen ones (spread over their
   NN-Degree) also with seeds 1 and 2 -- all through nnflash's own training path
   (``nnflash.controller.training.run_trainings``, what ``nnflash train`` runs), stored in a results
   database (``--db``) so that a rerun skips what is done and an interrupted run resumes;
4. ``multi``, ``flash`` and ``nnmass`` fitted on the chosen networks' **validation** accuracy, then
   judged on the held-out networks' **test** accuracy (the number a user would quote); the baselines
   are raw scores judged by rank only: NN-Degree, NN-Mass, params, MACs, synflow, NASWOT, and the
   proxy vote (the mean rank of synflow, jacob_cov and snip: Abdelfattah et al.'s vote of the three
   best proxies, written as a rank average);
5. for each, held-out Spearman, Kendall and MAE (points), and a paired bootstrap (``--boot``
   resamples of the held-out set) 95% interval of its difference to ``multi``: "ahead" is claimed
   only where the interval excludes 0;
6. the seed-to-seed standard deviation of the test accuracy (ddof 1, averaged over the networks
   trained with more than one seed): the noise floor no predictor can beat.

``--seeds N`` (default 1) trains every chosen and held-out network with seeds 0..N-1 (held-out
ones first): the predictors are then fitted on each network's mean validation accuracy over its
seeds and judged on its mean test accuracy, whose noise is the floor divided by sqrt(N), so the
figures say more about the predictors and less about one training's luck. ``--seeds 1`` prints
the single-seed figures from the same database at no cost.

Goal (issue 13): ``multi`` held-out Spearman >= 0.85 and Kendall >= 0.65, ahead of every single
feature, MAE within 1.5x the noise floor. About 90 minutes of training on the 2-core development
machine. ``--smoke`` runs the whole path in a few minutes with a tiny protocol and few networks (its
figures mean nothing; it checks the machinery), in its own database.

Run: ``python benchmarks/accuracy_predictor.py [--smoke] [--seeds N] [--db PATH] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from nnflash.calibration.accuracy import make_accuracy_model, rank_correlations, spec_features
from nnflash.controller.accuracy import PooledTraining, dataset_space, pooled_trainings, proxies_for, select_for_dataset
from nnflash.controller.store import ResultsDB
from nnflash.controller.training import run_trainings
from nnflash.models.datasets import load_dataset
from nnflash.models.spec import AnySpec
from nnflash.models.training_protocol import TrainingProtocol, get_protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.training_common import SMOKE_PROTOCOL, Progress  # noqa: E402

DATASET = "fashion-mnist"


def _train(
    specs: list[AnySpec], ds: Any, protocol: TrainingProtocol, seed: int, db: Path, device: str, label: str
) -> None:
    res = run_trainings(specs, ds, protocol, seed, db, torch_device=device, observer=Progress(label))
    if res.interrupted:
        raise KeyboardInterrupt


def _ranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v)


def _metrics(y: np.ndarray, score: np.ndarray, is_accuracy: bool) -> dict[str, float]:
    rho, tau = rank_correlations(y, score)
    mae = float(100 * np.mean(np.abs(score - y))) if is_accuracy else math.nan
    return {"spearman": rho, "kendall": tau, "mae": mae}


def _bootstrap_diff(
    y: np.ndarray, ref: np.ndarray, other: np.ndarray, ref_acc: bool, other_acc: bool, n_boot: int, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of ``metric(other) - metric(ref)`` over paired resamples."""
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {"spearman": [], "kendall": [], "mae": []}
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a = _metrics(y[idx], ref[idx], ref_acc)
        b = _metrics(y[idx], other[idx], other_acc)
        for k in diffs:
            d = b[k] - a[k]
            if math.isfinite(d):
                diffs[k].append(d)
    out = {}
    for k, v in diffs.items():
        out[k] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) > 10 else (math.nan, math.nan)
    return out


def _noise_ceiling(y: np.ndarray, noise: float, draws: int = 4000, seed: int = 0) -> dict[str, Any]:
    """What an oracle reaches on ``y``: a predictor that knows every network's expected accuracy
    exactly, judged against one training each (seed noise of std ``noise``, a fraction). The
    expected accuracies are drawn normal with the variance ``y`` has left once the noise is taken
    out, ``len(y)`` at a time; returns the median and 5-95% range of its Spearman and Kendall over
    ``draws`` simulated held-out sets, and its expected MAE (``noise * sqrt(2 / pi)``)."""
    rng = np.random.default_rng(seed)
    spread = float(np.std(y, ddof=1))
    true_sd = math.sqrt(max(spread**2 - noise**2, 0.0))
    rho, tau = [], []
    for _ in range(draws):
        t = rng.normal(0.0, true_sd, len(y))
        r, k = rank_correlations(t + rng.normal(0.0, noise, len(y)), t)
        rho.append(r)
        tau.append(k)
    q = [5, 50, 95]
    return {
        "spread": spread,
        "true_sd": true_sd,
        "spearman": [float(v) for v in np.percentile(rho, q)],
        "kendall": [float(v) for v in np.percentile(tau, q)],
        "mae": 100 * noise * math.sqrt(2 / math.pi),
    }


def _fmt(v: float, spec: str = ".3f") -> str:
    return format(v, spec) if math.isfinite(v) else "-"


def _fmt_ci(ci: tuple[float, float], spec: str = "+.3f") -> str:
    return f"[{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]" if all(math.isfinite(c) for c in ci) else "-"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny protocol and few networks: checks the machinery only")
    ap.add_argument(
        "--db",
        default=None,
        help="results database (default .nnflash-cache/accuracy_predictor[-smoke].db, git-ignored)",
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--protocol", default=None, help="training protocol (default quick; smoke: a tiny one)")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--held-out", type=int, default=None)
    ap.add_argument("--noise-specs", type=int, default=None)
    ap.add_argument("--pool", type=int, default=None)
    ap.add_argument("--boot", type=int, default=None)
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds per chosen and held-out network (default 1); fitted and judged on their means",
    )
    ap.add_argument("--torch-device", default="auto")
    a = ap.parse_args(argv)
    if a.seeds < 1:
        ap.error(f"--seeds: must be >= 1, got {a.seeds}")
    seeds = tuple(range(a.seeds))
    smoke = a.smoke
    budget = a.budget or (10 if smoke else 25)
    held_out = a.held_out or (8 if smoke else 30)
    noise_specs = a.noise_specs or (2 if smoke else 5)
    noise_seeds = (0, 1) if smoke else (0, 1, 2)
    pool = a.pool or (300 if smoke else 2000)
    n_boot = a.boot or (200 if smoke else 2000)
    protocol = get_protocol(a.protocol) if a.protocol else (SMOKE_PROTOCOL if smoke else get_protocol("quick"))
    db = Path(a.db) if a.db else Path(".nnflash-cache") / f"accuracy_predictor{'-smoke' if smoke else ''}.db"
    db.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    ds = load_dataset(DATASET, a.data_dir)
    space = dataset_space(DATASET)
    print(f"accuracy predictor benchmark{' (SMOKE: figures mean nothing)' if smoke else ''}")
    print(
        f"dataset {DATASET} ({ds.fingerprint}), space {space.name}, protocol {protocol.name} "
        f"({protocol.protocol_hash}: {protocol.train_size} images x {protocol.epochs} epochs), db {db}"
    )
    print(f"host {platform.node()}: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    chosen = select_for_dataset(DATASET, budget, pool=pool, seed=0)
    chosen_ids = {s.spec_id for s in chosen}
    held: list[AnySpec] = []
    for s in space.sample(held_out * 4, seed=12345):
        if s.spec_id not in chosen_ids and s.spec_id not in {h.spec_id for h in held}:
            held.append(s)
        if len(held) == held_out:
            break
    deg = spec_features(chosen)["nn_degree"]
    order = np.argsort(deg)
    noisy = [chosen[int(order[int(round(i))])] for i in np.linspace(0, len(chosen) - 1, noise_specs)]

    print(
        f"training: {budget} chosen + {len(held)} held-out (seeds {list(seeds)}), "
        f"{noise_specs} chosen x seeds {list(noise_seeds)}"
    )
    _train(chosen + held, ds, protocol, 0, db, a.torch_device, "seed 0")
    for seed in noise_seeds[1:]:
        _train(noisy, ds, protocol, seed, db, a.torch_device, f"seed {seed}")
    for seed in seeds[1:]:  # the held-out answer key first: it is what the figures are judged on
        _train(held, ds, protocol, seed, db, a.torch_device, f"held-out, seed {seed}")
    for seed in seeds[1:]:
        _train(chosen, ds, protocol, seed, db, a.torch_device, f"chosen, seed {seed}")

    with ResultsDB(db) as store:
        by_id: dict[str, list[PooledTraining]] = {}
        for seed in seeds:  # the mean over this run's seeds only (the noise specs have more in the db)
            for p in pooled_trainings(store, DATASET, protocol.protocol_hash, seed=seed):
                by_id.setdefault(p.spec.spec_id, []).append(p)
        tr = [s for s in chosen if s.spec_id in by_id]
        te = [s for s in held if s.spec_id in by_id]
        proxies_tr, _ = proxies_for(tr, ds, db=store)
        proxies_te, _ = proxies_for(te, ds, db=store)
        noise_rows = store.trainings(dataset=DATASET, protocol_hash=protocol.protocol_hash, status="ok")
    if len(tr) < budget or len(te) < held_out:
        print(f"note: {budget - len(tr)} chosen and {held_out - len(te)} held-out trainings failed; judged on the rest")
    y_tr = np.array([np.mean([p.val_accuracy for p in by_id[s.spec_id]]) for s in tr])
    y_te = np.array([np.mean([p.test_accuracy for p in by_id[s.spec_id]]) for s in te])
    n_seeds = [len(by_id[s.spec_id]) for s in tr + te]

    scores: dict[str, tuple[np.ndarray, bool]] = {}
    for kind in ("multi", "flash", "nnmass"):
        model = make_accuracy_model(kind)
        kw = {"proxies": proxies_tr} if model.needs_proxies else {}
        model.fit(tr, y_tr, **kw)
        scores[kind] = (model.predict(te, **({"proxies": proxies_te} if model.needs_proxies else {})), True)
    f = spec_features(te)
    for name in ("nn_degree", "nn_mass", "params", "macs"):
        scores[f"raw {name}"] = (f[name], False)
    px = {n: np.array([p[n] for p in proxies_te]) for n in ("synflow", "naswot", "jacob_cov", "snip")}
    scores["synflow"] = (px["synflow"], False)
    scores["naswot"] = (px["naswot"], False)
    scores["proxy vote"] = ((_ranks(px["synflow"]) + _ranks(px["jacob_cov"]) + _ranks(px["snip"])) / 3, False)

    per_spec: dict[str, list[float]] = {}
    noisy_ids = {s.spec_id for s in noisy}
    run_ids = {s.spec_id for s in chosen + held}
    for r in noise_rows:
        if (r["spec_id"] in noisy_ids and r["seed"] in noise_seeds) or (r["spec_id"] in run_ids and r["seed"] in seeds):
            per_spec.setdefault(r["spec_id"], []).append(r["test_accuracy"])
    stds = [float(np.std(v, ddof=1)) for v in per_spec.values() if len(v) >= 2]
    floor = 100 * float(np.mean(stds)) if stds else math.nan

    ref, _ = scores["multi"]
    print()
    print(
        f"held-out: {len(te)} networks (test accuracy {100 * y_te.min():.2f}..{100 * y_te.max():.2f}%), "
        f"fitted on {len(tr)} (validation accuracy); {min(n_seeds)}..{max(n_seeds)} seeds per network, "
        f"averaged; paired bootstrap of {n_boot}: 95% interval of (row - multi)"
    )
    head = f"{'predictor':<16}{'Spearman':>9}{'Kendall':>9}{'MAE pt':>8}   "
    head += f"{'d Spearman':<18}{'d Kendall':<18}{'d MAE pt':<18}"
    print(head)
    print("-" * len(head))
    for name, (score, is_acc) in scores.items():
        m = _metrics(y_te, score, is_acc)
        if name == "multi":
            cis = {"spearman": (math.nan, math.nan), "kendall": (math.nan, math.nan), "mae": (math.nan, math.nan)}
        else:
            cis = _bootstrap_diff(y_te, ref, score, True, is_acc, n_boot)
        print(
            f"{name:<16}{_fmt(m['spearman']):>9}{_fmt(m['kendall']):>9}{_fmt(m['mae'], '.2f'):>8}   "
            f"{_fmt_ci(cis['spearman']):<18}{_fmt_ci(cis['kendall']):<18}{_fmt_ci(cis['mae'], '+.2f'):<18}"
        )
    print()
    print(
        f"seed-to-seed std of test accuracy ({len(stds)} networks with 2-{max(map(len, per_spec.values()))} seeds): "
        f"{_fmt(floor, '.2f')} points (the noise floor of one training)"
    )
    held_seeds = min(len(by_id[s.spec_id]) for s in te) if te else 1
    if math.isfinite(floor) and len(y_te) > 2:
        c = _noise_ceiling(y_te, floor / 100 / math.sqrt(held_seeds))
        print(
            f"noise ceiling: the held-out test accuracies spread {100 * c['spread']:.2f} points (std), "
            f"{100 * c['true_sd']:.2f} once the seed noise is taken out; an oracle that knew each network's "
            f"expected accuracy would reach Spearman {c['spearman'][1]:.3f} [5-95%: {c['spearman'][0]:.3f}.."
            f"{c['spearman'][2]:.3f}], Kendall {c['kendall'][1]:.3f} [{c['kendall'][0]:.3f}..{c['kendall'][2]:.3f}], "
            f"MAE {c['mae']:.2f} pt against the mean of {held_seeds} training(s) per network"
        )
    m = _metrics(y_te, ref, True)
    ahead = []
    for name, (score, is_acc) in scores.items():
        if name == "multi":
            continue
        ci = _bootstrap_diff(y_te, ref, score, True, is_acc, n_boot)["spearman"]
        ahead.append(math.isfinite(ci[1]) and ci[1] < 0)
    print(
        f"goal: multi Spearman {_fmt(m['spearman'])} (>= 0.85), Kendall {_fmt(m['kendall'])} (>= 0.65), "
        f"ahead (Spearman interval excludes 0) of {sum(ahead)} of {len(ahead)} others, "
        f"MAE {_fmt(m['mae'], '.2f')} pt vs 1.5 x noise floor {_fmt(1.5 * floor, '.2f')} pt"
    )
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
