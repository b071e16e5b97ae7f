"""Benchmark 3 of issue 13: do networks of similar NN-Mass reach similar accuracy whatever their size?

The NN-Mass paper (CVPR 2021) claims that, within one design space, networks with similar NN-Mass
reach similar accuracy even when their parameter counts differ a lot. This script puts the claim to
a small test on Fashion-MNIST's default space (``flash-fmnist``) with the ``quick`` protocol:

1. three NN-Mass levels, at the 20th, 50th and 80th percentile of the NN-Mass of uniform draws of
   the space (seed 0);
2. per level, ``models.space.generate`` draws candidates within +-2% of the level's NN-Mass; of
   those, four whose parameter counts are spread on a log scale (the smallest, the largest, and the
   two nearest to the geometric thirds between them); the level is used only when its largest
   network has at least 3x the parameters of its smallest (the issue's condition);
3. all twelve trained with seed 0 through nnflash's own training path (``run_trainings``, what
   ``nnflash train`` runs), stored in a results database (``--db``), so that a rerun skips what is
   done and an interrupted run resumes;
4. printed: per network its NN-Mass, params, MACs and test accuracy; per level the mean, the range
   and the standard deviation of the test accuracy; between levels the spread of the level means;
   and, as the counter-hypothesis, the Spearman correlation of accuracy with log parameters inside
   each level (if size, not NN-Mass, drove accuracy, it would be strongly positive in every level).

The paper's claim holds on these data when the within-level spread is small against the
between-level spread (the ratio is printed), and fails when it is not; the script reports either.
About 12 quick trainings: 20-40 minutes on the 2-core development machine (bigger networks are
slower). ``--smoke`` runs the whole path with a tiny protocol in a few minutes (figures mean
nothing).

Run: ``python benchmarks/nnmass_claim.py [--smoke] [--db PATH] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.stats import spearmanr

from nnflash.controller.accuracy import dataset_space, pooled_trainings
from nnflash.controller.store import ResultsDB
from nnflash.controller.training import run_trainings
from nnflash.models.datasets import load_dataset
from nnflash.models.metrics import compute_metrics
from nnflash.models.space import Space, generate
from nnflash.models.spec import AnySpec
from nnflash.models.training_protocol import get_protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.training_common import SMOKE_PROTOCOL, Progress  # noqa: E402

DATASET = "fashion-mnist"
PERCENTILES = (20, 50, 80)
PER_LEVEL = 4
MIN_SIZE_RATIO = 3.0


def pick_level(space: Space, target: float, seed: int) -> list[AnySpec]:
    """Four specs within 2% of ``target`` NN-Mass, spread over log(params): see the module docstring."""
    cands = generate(space, 200, target_mass=target, tolerance=0.02, seed=seed)
    params = np.array([compute_metrics(s)["params"] for s in cands], dtype=float)
    order = np.argsort(params)
    lo, hi = math.log(params[order[0]]), math.log(params[order[-1]])
    chosen: list[int] = []
    for q in np.linspace(0.0, 1.0, PER_LEVEL):
        want = lo + q * (hi - lo)
        left = [i for i in order if i not in chosen]
        chosen.append(min(left, key=lambda i: abs(math.log(params[i]) - want)))
    return [cands[i] for i in chosen]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny protocol: checks the machinery only")
    ap.add_argument("--db", default=None, help="results database (default .nnflash-cache/nnmass_claim[-smoke].db)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--protocol", default=None, help="training protocol (default quick; smoke: a tiny one)")
    ap.add_argument("--torch-device", default="auto")
    a = ap.parse_args(argv)
    protocol = get_protocol(a.protocol) if a.protocol else (SMOKE_PROTOCOL if a.smoke else get_protocol("quick"))
    db = Path(a.db) if a.db else Path(".nnflash-cache") / f"nnmass_claim{'-smoke' if a.smoke else ''}.db"
    db.parent.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(DATASET, a.data_dir)
    space = dataset_space(DATASET)
    d, w, t = space.sample_arrays(20000, np.random.default_rng(0))
    masses = space.metrics(d, w, t)["nn_mass"]
    levels = [float(np.percentile(masses, p)) for p in PERCENTILES]
    print(f"NN-Mass claim benchmark{' (SMOKE: figures mean nothing)' if a.smoke else ''}")
    print(
        f"dataset {DATASET}, space {space.name}, protocol {protocol.name} ({protocol.protocol_hash}: "
        f"{protocol.train_size} images x {protocol.epochs} epochs), seed 0, db {db}"
    )
    print("NN-Mass levels (percentiles " + ", ".join(map(str, PERCENTILES)) + " of the space): "
          + ", ".join(f"{m:.1f}" for m in levels))  # fmt: skip

    groups: list[list[AnySpec]] = []
    group_levels: list[float] = []
    for i, level in enumerate(levels):
        specs = pick_level(space, level, seed=i)
        p = [compute_metrics(s)["params"] for s in specs]
        ratio = max(p) / min(p)
        if ratio < MIN_SIZE_RATIO:
            print(f"level {level:.1f}: the largest network has only {ratio:.1f}x the smallest's params; skipped")
            continue
        groups.append(specs)
        group_levels.append(level)
    if not groups:
        print("no level has networks whose sizes differ 3x: nothing to test")
        return 1

    all_specs = [s for g in groups for s in g]
    res = run_trainings(all_specs, ds, protocol, 0, db, torch_device=a.torch_device, observer=Progress())
    if res.interrupted:
        return 130

    with ResultsDB(db) as store:
        pooled = pooled_trainings(store, DATASET, protocol.protocol_hash, seed=0)
    acc = {p.spec.spec_id: p.test_accuracy for p in pooled}

    print()
    print(f"{'level':>7} {'spec':<14}{'NN-Mass':>9}{'params':>10}{'MACs':>12}{'test %':>8}")
    means, within_sd, rhos = [], [], []
    for level, specs in zip(group_levels, groups):
        rows = [(s, compute_metrics(s)) for s in specs if s.spec_id in acc]
        ys = np.array([100 * acc[s.spec_id] for s, _ in rows])
        for s, m in rows:
            print(f"{level:>7.1f} {s.spec_id:<14}{m['nn_mass']:>9.1f}{m['params']:>10,}{m['macs']:>12,}"
                  f"{100 * acc[s.spec_id]:>8.2f}")  # fmt: skip
        if len(ys) < 2:
            continue
        p = np.array([m["params"] for _, m in rows], dtype=float)
        rho = float(spearmanr(np.log(p), ys)[0])
        means.append(float(ys.mean()))
        within_sd.append(float(ys.std(ddof=1)))
        rhos.append(rho)
        print(
            f"        mean {ys.mean():.2f}%, range {ys.max() - ys.min():.2f} pt, sd {ys.std(ddof=1):.2f} pt, "
            f"params {p.max() / p.min():.1f}x apart, Spearman(log params, acc) {rho:+.2f}"
        )
    if len(means) < 2:
        print("fewer than two levels trained: no between-level comparison")
        return 1
    between = float(np.std(means, ddof=1))
    within = float(np.sqrt(np.mean(np.square(within_sd))))
    print()
    print(f"within-level sd (pooled): {within:.2f} pt; between-level sd of the means: {between:.2f} pt; "
          f"ratio between/within {between / within if within > 0 else math.inf:.2f}")  # fmt: skip
    print(f"level means: {', '.join(f'{m:.2f}%' for m in means)}; mean Spearman(log params, acc) inside a level "
          f"{np.mean(rhos):+.2f}")  # fmt: skip
    if between > within:
        print("reading: NN-Mass separates the levels more than size spreads networks inside a level")
    else:
        print("reading: inside a level, accuracy spreads as much as between levels: the claim does not hold here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
