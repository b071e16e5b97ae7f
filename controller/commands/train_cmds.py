"""`nnflash train`: train specs on a dataset and store their accuracies (parse, call, print)."""

from __future__ import annotations

import json
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import click
from rich.console import Console
from rich.progress import TaskID

from nnflash.controller.commands.campaign_view import progress_bars
from nnflash.controller.commands.common import db_option, emit_json
from nnflash.controller.training import (
    TrainingObserver,
    TrainingPlan,
    TrainingRunResult,
    make_executor,
    run_trainings,
)
from nnflash.models.datasets import DATASETS
from nnflash.models.errors import SpecError
from nnflash.models.spec import AnySpec, parse_spec
from nnflash.models.training import EpochInfo
from nnflash.models.training_protocol import PRESETS, get_protocol


def load_train_specs(path: str) -> list[AnySpec]:
    """Specs from a JSON-lines file: each line a spec, or an object holding one under ``"spec"``
    (what the search writes). Errors name the line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot read: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{p}:{n}: malformed JSON: {e.msg} at column {e.colno}") from None
        if isinstance(obj, dict) and "family" not in obj and isinstance(obj.get("spec"), dict):
            obj = obj["spec"]
        try:
            out.append(parse_spec(obj))
        except SpecError as e:
            raise SpecError(f"{p}:{n}: {e}") from None
    if not out:
        raise SpecError(f"{p}: no specs in file")
    return out


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


def _summary(result: TrainingRunResult, console: Console) -> None:
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


@click.command("train")
@click.argument("specs_file", metavar="SPECS.jsonl")
@click.option("--dataset", "dataset_name", required=True, help=f"Dataset: {', '.join(DATASETS)}.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder of the dataset's files.")
@click.option(
    "--protocol",
    "protocol_name",
    default="quick",
    show_default=True,
    help=f"Training protocol: {', '.join(PRESETS)}, or a TOML file.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and the data order.")
@click.option(
    "--torch-device",
    default="auto",
    show_default=True,
    help="auto (CUDA when available), cpu, cuda or cuda:N.",
)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Who trains.")
@click.option("--ray-address", default=None, help="Ray cluster to join: auto or ray://HOST:10001 (default: local).")
@click.option("--workers", type=int, default=1, show_default=True, help="Local training processes (one per GPU).")
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per spec on stdout.")
def train_cmd(
    specs_file: str,
    dataset_name: str,
    data_dir: Optional[str],
    protocol_name: str,
    seed: int,
    torch_device: str,
    executor: str,
    ray_address: Optional[str],
    workers: int,
    db_path: str,
    as_json: bool,
) -> None:
    """Train each spec on a dataset and store its validation and test accuracy.

    Resumable: rerun the same command and what is done is skipped; an interrupted spec resumes
    from its last epoch. Final weights are kept in a folder beside the database.

    \b
    Example:
      nnflash space sample --dataset fashion-mnist --n 3 --seed 1 --out fm.jsonl
      nnflash train fm.jsonl --dataset fashion-mnist --protocol quick
    """
    from nnflash.controller.errors import ConfigError
    from nnflash.models.datasets import dataset_info

    dataset_info(dataset_name)  # an unknown dataset first, before anything is read
    if seed < 0:
        raise ConfigError(f"--seed: must be a non-negative integer, got {seed}")
    protocol = get_protocol(protocol_name)
    specs = load_train_specs(specs_file)
    ex = make_executor(executor, workers=workers, ray_address=ray_address)
    console = Console(stderr=True)
    view = TrainView(console, as_json=as_json)
    result = run_trainings(
        specs,
        dataset_name,
        protocol,
        seed,
        db_path,
        data_dir=data_dir,
        torch_device=torch_device,
        executor=ex,
        observer=view,
    )
    _summary(result, console)
    if result.interrupted:
        cmd = " ".join(shlex.quote(a) for a in ["nnflash", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
        console.print(
            f"[yellow]interrupted:[/] every finished training is stored; to resume, run {cmd} again "
            "(interrupted specs continue from their last epoch)"
        )
        click.get_current_context().exit(130)


def register(cli: click.Group) -> None:
    cli.add_command(train_cmd)
