"""Which trained weights belong to a spec: the trainings ``nnflash train`` stored in the results
database (one ``ok`` row per (spec, dataset, protocol, seed), each with the path of its state dict).

A spec trained more than once (several protocols, seeds or datasets) is exported with the training
of the best validation accuracy (the newest among equals) whose weights file still exists; with
``dataset`` only that dataset's trainings count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from nnflash.controller.store import ResultsDB

__all__ = ["TrainedWeights", "trained_weights"]


@dataclass(frozen=True)
class TrainedWeights:
    spec_id: str
    path: str
    dataset: str
    protocol_hash: str
    seed: int
    val_accuracy: Optional[float]
    test_accuracy: Optional[float]

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "dataset": self.dataset,
            "protocol_hash": self.protocol_hash,
            "seed": self.seed,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
        }


def trained_weights(
    db_path: str | Path, spec_ids: Iterable[str], dataset: Optional[str] = None
) -> dict[str, TrainedWeights]:
    """``{spec_id: TrainedWeights}`` for the specs of ``spec_ids`` that have an ``ok`` training
    with an existing weights file in ``db_path`` (a missing database: none)."""
    wanted = set(spec_ids)
    if not wanted or not Path(db_path).exists():
        return {}
    with ResultsDB(db_path, readonly=True) as store:
        rows = store.trainings(dataset=dataset, status="ok", spec_ids=wanted)
    best: dict[str, tuple[tuple[float, int], TrainedWeights]] = {}
    for order, row in enumerate(rows):  # oldest first: a later equal one wins
        path = _existing(row.get("weights_path"), Path(db_path))
        if path is None:
            continue
        val = row.get("val_accuracy")
        rank = (float(val) if val is not None else float("-inf"), order)
        tw = TrainedWeights(
            spec_id=str(row["spec_id"]),
            path=str(path),
            dataset=str(row["dataset"]),
            protocol_hash=str(row["protocol_hash"]),
            seed=int(row["seed"]),
            val_accuracy=val,
            test_accuracy=row.get("test_accuracy"),
        )
        if tw.spec_id not in best or rank > best[tw.spec_id][0]:
            best[tw.spec_id] = (rank, tw)
    return {sid: tw for sid, (_, tw) in best.items()}


def _existing(path: Optional[str], db_path: Path) -> Optional[Path]:
    """The weights file as stored (relative paths: to the working directory of the training), else
    relative to the database's folder; None if neither exists."""
    if not path:
        return None
    p = Path(path)
    for cand in (p,) if p.is_absolute() else (p, db_path.parent / p):
        if cand.is_file():
            return cand
    return None
