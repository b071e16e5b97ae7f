"""Accuracy predictors for a command: trained accuracies from the database, proxies cached in it.

- :func:`pooled_trainings` reads the ``ok`` trainings of one (dataset, protocol hash) -- optionally
  one seed -- and averages the seeds of each spec (seeds of one protocol pool; two protocols never
  mix, because the hash is part of the query).
- :func:`proxies_for` returns the zero-cost proxies of specs on one batch of the dataset, reading
  what the database already holds for that batch key and computing (and storing) the rest.
- :func:`fit_accuracy` is ``nnflash accuracy fit`` below the CLI: pool, check, cross-validate, fit,
  save the JSON and the predicted-vs-trained plot.
- :func:`predict_accuracy` and :func:`select_for_dataset` serve ``accuracy predict`` / ``select``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.calibration.accuracy import (
    AccuracyModel,
    AccuracyModelError,
    cross_validate_accuracy,
    make_accuracy_model,
    plot_predicted_vs_trained,
    select_for_training,
)
from nnflash.controller.store import ResultsDB, StoreError
from nnflash.models.datasets import DEFAULT_SPACES, Dataset, dataset_info, load_dataset
from nnflash.models.errors import SpaceError
from nnflash.models.proxies import DEFAULT_BATCH_SEED, DEFAULT_BATCH_SIZE, PROXY_NAMES, compute_proxies, proxy_batch
from nnflash.models.space import AnySpace, get_space
from nnflash.models.spec import AnySpec, parse_spec
from nnflash.models.training_protocol import TrainingProtocol

TARGETS = ("val", "test")


@dataclass
class PooledTraining:
    """One spec's trained accuracy, averaged over the seeds of one protocol."""

    spec: AnySpec
    val_accuracy: float
    test_accuracy: float
    seeds: list[int]


def pooled_trainings(
    db: ResultsDB, dataset: str, protocol_hash: str, seed: Optional[int] = None
) -> list[PooledTraining]:
    """The ``ok`` trainings of ``dataset`` under ``protocol_hash`` (one ``seed`` or all), one entry
    per spec (seeds averaged), in order of first training."""
    rows = db.trainings(dataset=dataset, protocol_hash=protocol_hash, seed=seed, status="ok")
    by_spec: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_spec.setdefault(r["spec_id"], []).append(r)
    out = []

    def mean(values: list[Any]) -> float:  # imported tables may hold only one of the two accuracies
        present = [float(v) for v in values if v is not None]
        return float(np.mean(present)) if present else math.nan

    for sid, rs in by_spec.items():
        stored = db.get_spec(sid)
        if stored is None:
            raise StoreError(f"results database {db.path}: spec {sid} has trainings but is not in the specs table")
        out.append(
            PooledTraining(
                spec=parse_spec(stored["json"]),
                val_accuracy=mean([r["val_accuracy"] for r in rs]),
                test_accuracy=mean([r["test_accuracy"] for r in rs]),
                seeds=sorted(int(r["seed"]) for r in rs),
            )
        )
    return out


@dataclass(frozen=True)
class ExternalProtocol:
    """The protocol of accuracies imported from a table (``nnflash import accuracy``): a name and
    the hash it is stored under; nnflash knows nothing else of how those networks were trained."""

    name: str
    protocol_hash: str


def resolve_protocol(name: str, db_path: str | Path) -> TrainingProtocol | ExternalProtocol:
    """A training preset or TOML file (``get_protocol``), else a protocol imported under ``name``
    into the database at ``db_path``."""
    from nnflash.models.training_protocol import ProtocolError, get_protocol

    try:
        return get_protocol(name)
    except ProtocolError as e:
        if Path(db_path).exists():
            with ResultsDB(db_path, readonly=True) as db:
                found = db.external_protocol(name)
            if found is not None:
                return ExternalProtocol(found["name"], found["protocol_hash"])
        raise ProtocolError(f"{e}; nor an imported protocol in {db_path}") from None


def proxies_for(
    specs: Sequence[AnySpec],
    dataset: Dataset,
    *,
    batch_seed: int = DEFAULT_BATCH_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    db: Optional[ResultsDB] = None,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Proxies of every spec on the batch ``(batch_seed, batch_size)`` of ``dataset``, read from and
    written to ``db`` when given; also the batch's description (for a predictor's metadata)."""
    batch = proxy_batch(dataset, seed=batch_seed, batch_size=batch_size)
    cached = db.proxies(dataset.name, batch.key, [s.spec_id for s in specs]) if db is not None else {}
    out = []
    for s in specs:
        values = cached.get(s.spec_id)
        if values is None or any(values.get(n) is None for n in PROXY_NAMES):
            values = compute_proxies(s, batch)
            if db is not None:
                db.add_proxies(s.spec_id, dataset.name, batch.key, values)
            cached[s.spec_id] = values
        out.append({n: float(values[n]) for n in PROXY_NAMES})
    info = {"key": batch.key, "seed": batch_seed, "size": batch_size, "dataset": dataset.name}
    return out, info


@dataclass
class FitOutcome:
    model: AccuracyModel
    cv: dict[str, float]
    path: Path
    plot_path: Path
    n_specs: int
    n_trainings: int
    seeds: list[int] = field(default_factory=list)


def fit_accuracy(
    db_path: str | Path,
    dataset: str,
    protocol: TrainingProtocol | ExternalProtocol,
    kind: str,
    out: str | Path,
    *,
    seed: Optional[int] = None,
    data_dir: str | Path | None = None,
    target: str = "val",
    batch_seed: int = DEFAULT_BATCH_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> FitOutcome:
    """``nnflash accuracy fit``: see the module docstring. The plot is ``out`` with suffix ``.png``."""
    info = dataset_info(dataset)
    if target not in TARGETS:
        raise AccuracyModelError(f"target: must be one of {', '.join(TARGETS)}, got {target!r}")
    model = make_accuracy_model(kind)
    if not Path(db_path).exists():
        raise StoreError(f"results database {db_path} does not exist (train some specs first: nnflash train)")
    with ResultsDB(db_path) as db:
        pooled = pooled_trainings(db, dataset, protocol.protocol_hash, seed)
        where = f"{dataset} with protocol {protocol.name} ({protocol.protocol_hash})" + (
            f", seed {seed}" if seed is not None else ""
        )
        if len(pooled) < model.min_samples:
            raise AccuracyModelError(
                f"too few trained specs to fit {kind}: {len(pooled)} trained on {where} in {db_path}, "
                f"need at least {model.min_samples}"
            )
        specs = [p.spec for p in pooled]
        for s in specs:
            if list(s.input_shape) != list(info.input_shape):
                raise AccuracyModelError(
                    f"spec {s.spec_id} has input shape {'x'.join(map(str, s.input_shape))}, dataset {dataset} "
                    f"has {'x'.join(map(str, info.input_shape))}"
                )
        y = np.array([p.val_accuracy if target == "val" else p.test_accuracy for p in pooled])
        missing = np.flatnonzero(~np.isfinite(y))
        if len(missing):
            other = "test" if target == "val" else "val"
            raise AccuracyModelError(
                f"{len(missing)} of the {len(pooled)} trained specs on {where} have no {target} accuracy "
                f"(e.g. {pooled[missing[0]].spec.spec_id}; an imported table holds one of them): try --target {other}"
            )
        proxies = None
        batch_info = None
        if model.needs_proxies:
            ds = load_dataset(dataset, data_dir)
            proxies, batch_info = proxies_for(specs, ds, batch_seed=batch_seed, batch_size=batch_size, db=db)
    cv, pred = cross_validate_accuracy(lambda: make_accuracy_model(kind), specs, y, proxies=proxies)
    model.fit(specs, y, proxies=proxies)
    seeds = sorted({s for p in pooled for s in p.seeds})
    out_path = Path(out)
    if out_path.parent and not out_path.parent.exists():
        raise AccuracyModelError(f"--out: directory {out_path.parent} does not exist")
    model.save(
        out_path,
        dataset=dataset,
        protocol_hash=protocol.protocol_hash,
        protocol=protocol.name,
        target=f"{target}_accuracy",
        seeds=seeds,
        cv=cv,
        proxy_batch=batch_info,
    )
    plot = plot_predicted_vs_trained(
        y,
        pred,
        out_path.with_suffix(".png"),
        title=f"{kind} on {dataset}, {protocol.name}: cross-validated ({int(cv['folds'])} folds)",
    )
    return FitOutcome(model, cv, out_path, plot, len(pooled), sum(len(p.seeds) for p in pooled), seeds)


def predict_accuracy(
    model: AccuracyModel,
    specs: Sequence[AnySpec],
    *,
    data_dir: str | Path | None = None,
    db_path: str | Path | None = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Predictions (fractions) and standard deviations (or None) of ``model`` for ``specs``; a
    predictor that needs proxies computes them on the batch recorded in its metadata (cached in the
    database at ``db_path`` when given)."""
    model.check_specs(specs)
    proxies = None
    if model.needs_proxies and specs:
        batch = model.metadata_.get("proxy_batch") or {}
        dataset = model.metadata_.get("dataset") or batch.get("dataset")
        if not dataset:
            raise AccuracyModelError(f"{model.kind} predictor does not record its dataset; refit it")
        ds = load_dataset(str(dataset), data_dir)
        seed, size = int(batch.get("seed", DEFAULT_BATCH_SEED)), int(batch.get("size", DEFAULT_BATCH_SIZE))
        db = ResultsDB(db_path) if db_path is not None else None
        try:
            proxies, info = proxies_for(specs, ds, batch_seed=seed, batch_size=size, db=db)
        finally:
            if db is not None:
                db.close()
        if batch.get("key") and info["key"] != batch["key"]:
            raise AccuracyModelError(
                f"the {dataset} files read now differ from those the predictor was fitted on "
                f"(proxy batch {info['key']}, fitted on {batch['key']}); pass the same --data-dir"
            )
    return model.predict_with_std(specs, proxies)


def dataset_space(dataset: str, space_name: Optional[str] = None) -> AnySpace:
    """``space_name`` or the dataset's default space, with the dataset's classes; a space of another
    input shape is an error."""
    info = dataset_info(dataset)
    space = get_space(space_name or DEFAULT_SPACES[dataset])
    if tuple(space.input_shape) != tuple(info.input_shape):
        shape, want = "x".join(map(str, space.input_shape)), "x".join(map(str, info.input_shape))
        raise SpaceError(f"--space: space {space.name} takes {shape} inputs, dataset {dataset} has {want} images")
    if space.num_classes != info.num_classes:
        space = dataclasses.replace(space, num_classes=info.num_classes)
    return space


def select_for_dataset(
    dataset: str, budget: int, *, space_name: Optional[str] = None, pool: int = 2000, seed: int = 0
) -> list[AnySpec]:
    """``budget`` specs of the dataset's space, spread over NN-Degree and size, from ``pool`` draws."""
    space = dataset_space(dataset, space_name)
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise AccuracyModelError(f"--pool: must be a positive integer, got {pool!r}")
    candidates = list({s.spec_id: s for s in space.sample(pool, seed=seed)}.values())  # distinct specs
    return [candidates[i] for i in select_for_training(candidates, budget, seed=seed)]
