"""What the training benchmarks share (``accuracy_predictor.py``, ``nnmass_claim.py``): the tiny
protocol of their ``--smoke`` runs and a one-line-per-network progress printer."""

from __future__ import annotations

import sys
import time
from typing import Any

from nnflash.controller.training import TrainingObserver, TrainingPlan
from nnflash.models.training_protocol import TrainingProtocol

#: ``--smoke``: checks the machinery in minutes (1,024 images, one epoch); its figures mean nothing.
SMOKE_PROTOCOL = TrainingProtocol(
    name="smoke",
    train_size=1024,
    val_size=500,
    epochs=1,
    batch_size=64,
    lr=0.05,
    schedule="linear",
    warmup_fraction=0.1,
)


class Progress(TrainingObserver):
    """The plan and its estimate, then one line per trained network with its test accuracy."""

    def __init__(self, label: str = "") -> None:
        self.label = f"{label}: " if label else ""
        self.t0 = time.perf_counter()
        self.n = 0
        self.todo = 0

    def planned(self, plan: TrainingPlan) -> None:
        self.todo = len(plan.todo)
        print(f"  {self.label}{len(plan.done)} done, {self.todo} to train (estimate {plan.estimate_s / 60:.1f} min)")
        sys.stdout.flush()

    def trained(self, row: dict[str, Any]) -> None:
        self.n += 1
        acc = row.get("test_accuracy")
        acc_s = f"{100 * acc:.2f}%" if acc is not None else row.get("error", "")
        took = time.perf_counter() - self.t0
        print(f"    [{self.n}/{self.todo}] {row['spec_id']} {row['status']} {acc_s} ({took:.0f} s)")
        sys.stdout.flush()
