"""How the CLI shows a campaign: progress bars (stderr), failed measurements, the summary tables."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Optional

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

from nnflash.controller.commands.common import emit_json
from nnflash.controller.profiling import CampaignObserver, PassesResult
from nnflash_agent.stats import model_latency_ms, visit_latency_of, visit_spread_of


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


def print_summary(done: PassesResult, console: Console) -> None:
    """Per-device counts of each pass, the devices' errors, and the fastest models measured, each
    with its latency by the one definition (the median of its undisturbed visits in the database,
    ``nnflash_agent.stats``) and how many visits that is."""
    several = done.passes > 1
    interrupted = done.interrupted_pass is not None
    ids = ", ".join(str(c.campaign_id) for c in done.campaigns)
    title = f"campaign{'s' if len(done.campaigns) > 1 else ''} {ids}" + (" (interrupted)" if interrupted else "")
    t = Table(title=title)
    cols = ("device", "planned", "ok", "failed", "disturbed", "still disturbed", "already done", "gave up")
    for col in (("pass",) if several else ()) + cols + ("reconnects", "busy", "wall"):
        t.add_column(col, justify="right" if col != "device" else "left")
    for k, result in enumerate(done.campaigns):
        for r in result.devices.values():
            busy = f"{100 * r.busy_s / r.wall_s:.0f}%" if r.wall_s > 0 else "-"
            t.add_row(
                *((f"{k + 1}/{done.passes}",) if several else ()),
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
    for result in done.campaigns:
        for r in result.devices.values():
            if r.error:
                console.print(f"[red]{r.device}: {r.error}[/]")
    visits: dict[tuple[str, str], list[float]] = {}
    spreads: dict[tuple[str, str], list[Optional[float]]] = {}
    for row in done.rows:
        lat = visit_latency_of(row)
        if lat is not None:
            key = (str(row["device"]), str(row["spec_id"]))
            visits.setdefault(key, []).append(lat)
            spreads.setdefault(key, []).append(visit_spread_of(row))
    if visits:
        lt = Table(title="latency of each model (median of its undisturbed visits in the database)")
        for col in ("spec", "device", "latency ms", "visits", "visit range"):
            lt.add_column(col, justify="left" if col in ("spec", "device") else "right")
        lat_of = {key: model_latency_ms(v, spreads[key]) for key, v in visits.items()}
        for key in sorted(lat_of, key=lambda k: lat_of[k])[:30]:
            v = visits[key]
            rng = f"{100 * (max(v) - min(v)) / lat_of[key]:.1f}%" if len(v) > 1 else "-"
            lt.add_row(key[1], key[0], f"{lat_of[key]:.3f}", str(len(v)), rng)
        console.print(lt)
