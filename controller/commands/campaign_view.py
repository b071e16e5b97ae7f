"""How the CLI shows a campaign: progress bars (stderr), failed measurements, the summary tables."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nnflash.controller.campaign import CampaignResult
from nnflash.controller.commands.common import emit_json
from nnflash.controller.profiling import CampaignObserver


def progress_bars(console: Console) -> Progress:
    """The progress display of every long command: description, bar, done/total, a note, times."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class ProgressView(CampaignObserver):
    """One progress bar per device on ``console`` (``label`` follows the device name), a warning
    line per failed measurement, and with ``as_json`` one JSON line per measurement on stdout.
    Observes one campaign."""

    def __init__(self, console: Console, *, as_json: bool = False, label: str = "") -> None:
        self.console = console
        self.as_json = as_json
        self.label = label
        self._progress = progress_bars(console)
        self._progress.start()
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def planned(self, todo: Mapping[str, Sequence[str]]) -> None:
        with self._lock:
            for device, spec_ids in todo.items():
                self._tasks[device] = self._progress.add_task(f"{device}{self.label}", total=len(spec_ids), note="")

    def measured(self, row: dict[str, Any]) -> None:
        with self._lock:
            if self.as_json:
                emit_json({k: v for k, v in row.items() if k != "stored"})
            if row["status"] != "ok":
                again = f" (measured again in {row['retry_in_s']:g} s)" if row.get("retry_in_s") is not None else ""
                self.console.print(
                    f"[yellow]{row['device']}: {row['spec_id']} {row['status']}{again}:[/] {row.get('error') or ''}"
                )

    def event(self, device: str, event: str) -> None:
        with self._lock:
            task = self._tasks[device]
            if event == "done":
                self._progress.update(task, advance=1, note="")
            elif event == "reconnecting":
                self._progress.update(task, note="[yellow]reconnecting")
            elif event == "reconnected":
                self._progress.update(task, note="reconnected")
            elif event == "error":
                self._progress.update(task, note="[red]unreachable")

    def stopping(self, abandon: bool) -> None:
        if abandon:
            self.console.print("[red]abandoning measurements in flight[/]")
        else:
            self.console.print("[yellow]stopping: finishing measurements in flight (Ctrl-C again to abandon them)[/]")

    def closed(self) -> None:
        self._progress.stop()


def print_summary(result: CampaignResult, console: Console) -> None:
    """Per-device counts of one campaign, its devices' errors, and the fastest models it measured."""
    t = Table(title=f"campaign {result.campaign_id}" + (" (interrupted)" if result.interrupted else ""))
    cols = ("device", "planned", "ok", "failed", "disturbed", "still disturbed", "already done", "gave up")
    for col in cols + ("reconnects", "busy", "wall"):
        t.add_column(col, justify="right" if col != "device" else "left")
    for r in result.devices.values():
        busy = f"{100 * r.busy_s / r.wall_s:.0f}%" if r.wall_s > 0 else "-"
        t.add_row(
            r.device,
            str(r.planned),
            str(r.ok),
            str(r.failed),
            str(r.disturbed),
            str(r.still_disturbed),
            str(r.skipped),
            str(r.gave_up),
            str(r.reconnects),
            busy,
            f"{r.wall_s:.1f} s",
        )
    console.print(t)
    for r in result.devices.values():
        if r.error:
            console.print(f"[red]{r.device}: {r.error}[/]")
    oks = [row for row in result.rows if row["status"] == "ok" and row.get("latency_ms") is not None]
    if oks:
        lt = Table(title="latency (this run; median of the undisturbed repeats)")
        for col in ("spec", "device", "latency ms", "mean ms", "p90 ms"):
            lt.add_column(col, justify="right" if "ms" in col else "left")
        for row in sorted(oks, key=lambda r: r["latency_ms"])[:30]:
            lt.add_row(
                row["spec_id"],
                row["device"],
                f"{row['latency_ms']:.3f}",
                f"{row['latency_ms_mean']:.3f}",
                f"{row['latency_ms_p90']:.3f}",
            )
        console.print(lt)
