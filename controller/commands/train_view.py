"""Progress and summary of `nnflash train` (imported only when the command runs: it pulls in torch)."""

from __future__ import annotations

import threading
from typing import Any, Optional

from rich.console import Console
from rich.progress import TaskID

from nnflash.controller.commands.campaign_view import progress_bars
from nnflash.controller.commands.common import emit_json
from nnflash.controller.training import TrainingObserver, TrainingPlan, TrainingRunResult
from nnflash.models.training import EpochInfo


def _fmt_s(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pct(v: Optional[float]) -> str:
    return f"{100 * v:.2f}%" if v is not None else "-"


class TrainView(TrainingObserver):
    """Progress on stderr: one bar over all training images of the plan (so its ETA moves with every
    epoch), the estimate before starting, one line per finished spec; ``--json`` lines on stdout."""

    def __init__(self, console: Console, *, as_json: bool) -> None:
        self.console = console
        self.as_json = as_json
        self._progress = progress_bars(console)
        self._task: Optional[TaskID] = None
        self._per_spec = 0
        self._seen: dict[str, int] = {}  # images of each spec already counted
        self._lock = threading.Lock()

    def planned(self, plan: TrainingPlan) -> None:
        self._per_spec = plan.train_images
        notes = []
        if plan.done:
            notes.append(f"{len(plan.done)} already trained (skipped)")
        if plan.gave_up:
            notes.append(f"{len(plan.gave_up)} given up after repeated failures (skipped)")
        extra = f"; {', '.join(notes)}" if notes else ""
        if plan.todo:
            self.console.print(
                f"training {len(plan.todo)} specs, {plan.train_images:,} training images each{extra}; "
                f"estimated {_fmt_s(plan.estimate_s)} ({plan.estimate_basis})"
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=len(plan.todo) * plan.train_images, note="")
        else:
            self.console.print(f"nothing to train{extra}")

    def skipped(self, row: dict[str, Any]) -> None:
        if self.as_json:
            emit_json(row)

    def epoch(self, spec_id: str, info: EpochInfo) -> None:
        with self._lock:
            if self._task is None:
                return
            before = self._seen.get(spec_id, 0)
            # a resumed spec reports its earlier epochs' images too: count each image once
            self._seen[spec_id] = max(before, info.images)
            self._progress.update(
                self._task,
                advance=self._seen[spec_id] - before,
                note=f"{spec_id} epoch {info.epoch}/{info.epochs} {info.images_per_s:,.0f} img/s",
            )

    def trained(self, row: dict[str, Any]) -> None:
        with self._lock:
            sid = row["spec_id"]
            if self._task is not None:
                self._progress.update(self._task, advance=self._per_spec - self._seen.get(sid, 0))
                self._seen[sid] = self._per_spec
            if self.as_json:
                emit_json(row)
            if row["status"] == "ok":
                self.console.print(
                    f"{sid}: val {_pct(row['val_accuracy'])} test {_pct(row['test_accuracy'])} "
                    f"({row.get('wall_s', 0):.0f} s, {row.get('images_per_s', 0):,.0f} img/s)"
                )
            else:
                self.console.print(f"[yellow]{sid}: {row['status']}:[/] {row.get('error') or ''}")

    def closed(self) -> None:
        self._progress.stop()


def summary(result: TrainingRunResult, console: Console) -> None:
    parts = [f"{result.ok} ok"]
    if result.diverged:
        parts.append(f"{result.diverged} diverged")
    if result.failed:
        parts.append(f"{result.failed} failed")
    if result.skipped:
        parts.append(f"{result.skipped} already done")
    if result.gave_up:
        parts.append(f"{result.gave_up} given up")
    console.print(f"trained: {', '.join(parts)} in {_fmt_s(result.wall_s)}")
