"""`nnflash export`, `nnflash profile`, `nnflash results`: artifacts, campaigns, the database."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Optional

import click
from rich.console import Console
from rich.table import Table

from nnflash.controller.campaign import MeasureSettings
from nnflash.controller.commands.campaign_view import ProgressView, print_summary, progress_bars
from nnflash.controller.commands.common import (
    artifacts_dir_for,
    check_disturbed_share,
    check_precision,
    connection_options,
    counting_options,
    db_option,
    devices_from,
    disturbance_options,
    emit_json,
    inventory_option,
    load_inventory,
    parse_affinity,
    precision_option,
)
from nnflash.controller.errors import ConfigError
from nnflash.controller.profiling import PROFILE_PASSES, profile_in_passes
from nnflash.controller.store import ResultsDB, rows_to_csv_text
from nnflash.controller.transport import make_connection
from nnflash.models.spec import load_specs_jsonl
from nnflash_agent.measure import OPTION_DEFAULTS
from nnflash_agent.runners import RUNTIMES


@click.command("export")
@click.argument("specs_file", metavar="SPECS.jsonl")
@click.option("--format", "formats", default="onnx", show_default=True, help="Comma-separated formats: onnx, tflite.")
@click.option("--int8", is_flag=True, help="TFLite: int8 post-training quantization (random representative data).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--trained",
    is_flag=True,
    help="Load the weights `nnflash train` stored for each spec (in --db; the best validation accuracy "
    "if trained several times) before exporting; specs never trained are exported untrained, with a warning.",
)
@click.option("--dataset", default=None, help="With --trained: only trainings on this dataset.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per artifact.")
def export_cmd(
    specs_file: str,
    formats: str,
    int8: bool,
    out_dir: str,
    trained: bool,
    dataset: Optional[str],
    db_path: str,
    as_json: bool,
) -> None:
    """Export specs to ONNX and/or TFLite, verified against torch, content-addressed and cached.

    Each spec's torch module is built once for all the formats (only when one is not cached).
    SPECS.jsonl may also hold the designs `nnflash search` writes."""
    from nnflash.controller.weights import trained_weights
    from nnflash.models.export import FORMATS, ExportOutcome, export_many

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    for f in fmts:
        if f not in FORMATS:
            raise ConfigError(f"--format: unknown format {f!r} (expected {', '.join(FORMATS)})")
    if int8 and "tflite" not in fmts:
        raise ConfigError("--int8 applies to the tflite format only")
    quantize = "int8" if int8 else None
    if dataset is not None and not trained:
        raise ConfigError("--dataset applies with --trained only")
    if trained and not Path(db_path).exists():
        raise ConfigError(f"--db: {db_path} does not exist (no trainings to take weights from)")
    specs = load_specs_jsonl(specs_file)
    weights = trained_weights(db_path, [s.spec_id for s in specs], dataset) if trained else {}
    console = Console(stderr=True)
    for s in specs:
        if trained and s.spec_id not in weights:
            console.print(f"[yellow]warning:[/] {s.spec_id} has no trained weights in {db_path}; exported untrained")
    failed = 0
    with progress_bars(console) as prog:
        task = prog.add_task("export", total=len(specs) * len(fmts), note="")

        def show(o: ExportOutcome) -> None:
            nonlocal failed
            row: dict[str, Any] = {"spec_id": o.spec_id, "format": o.format, "quantization": o.quantization}
            if o.artifact is not None:
                art = o.artifact
                row.update(path=str(art.path), sha256=art.sha256, size=art.size, cached=art.cached)
                row.update(max_rel_err=art.max_rel_err, status="ok")
                if trained:
                    tw = weights.get(o.spec_id)
                    row["weights"] = tw.to_dict() if tw is not None else None
            else:
                failed += 1
                row.update(status="failed", error=o.error)
                console.print(f"[red]export of {o.spec_id} to {o.format} failed:[/] {o.error}")
            if as_json:
                emit_json(row)
            prog.update(task, advance=1, note=o.spec_id)

        shown: list[ExportOutcome] = []  # of the spec being exported

        def progress(done: int, total: int, o: ExportOutcome) -> None:
            o = o if o.ok else dataclasses.replace(o, error=_first_line(o.error or "ExportError"))
            shown.append(o)
            show(o)

        for spec in specs:
            shown.clear()
            # One spec per call: an export error is an outcome; anything else raised while building or
            # running the module stops only this spec (its formats not yet done fail with it).
            try:
                w = {spec.spec_id: weights[spec.spec_id].path} if spec.spec_id in weights else None
                export_many([spec], fmts, out_dir, quantize=quantize, progress=progress, weights=w)
            except Exception as e:
                for fmt in fmts[len(shown) :]:
                    q = quantize if fmt == "tflite" else None
                    show(ExportOutcome(spec.spec_id, fmt, q, None, _first_line(str(e)) or type(e).__name__))
    console.print(f"exported {len(specs) * len(fmts) - failed} artifact(s) to {out_dir}, {failed} failed")
    if failed:
        sys.exit(1)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _settings(
    runtime: str,
    threads: Optional[int],
    repeat: int,
    min_repeat_ms: float,
    timeout_s: float,
    energy: str,
    precision: str = "fp32",
    affinity: Optional[str] = None,
    disturbed_share: Optional[float] = None,
) -> MeasureSettings:
    check_precision(runtime, precision)
    check_disturbed_share(disturbed_share)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: must be a positive integer, got {threads}")
    if repeat < 1:
        raise ConfigError(f"--repeat: must be a positive integer, got {repeat}")
    if timeout_s <= 0:
        raise ConfigError(f"--timeout: must be positive, got {timeout_s}")
    return MeasureSettings(
        runtime=runtime,
        threads=threads,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        timeout_s=timeout_s,
        energy=energy,
        precision=precision,
        affinity=parse_affinity(affinity),
        disturbed_share_max=disturbed_share,
    )


@click.command("profile")
@click.argument("specs_file", metavar="SPECS.jsonl")
@click.option(
    "--device",
    "device_names",
    default="local",
    show_default=True,
    help="Device name, or several separated by commas (one worker per device).",
)
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
@click.option("--threads", type=int, default=None, help="Inference threads (default: the runtime's).")
@precision_option
@counting_options(OPTION_DEFAULTS["repeat"], OPTION_DEFAULTS["min_repeat_ms"], "Timed repeats per model.")
@click.option("--energy", default="none", show_default=True, help="Energy meter on the device.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=OPTION_DEFAULTS["timeout_s"],
    show_default=True,
    help="Per-model time limit on the device (s).",
)
@click.option(
    "--max-attempts",
    type=int,
    default=2,
    show_default=True,
    help="Give up on a model after this many failed measurements.",
)
@disturbance_options
@click.option(
    "--max-disturbed",
    type=int,
    default=3,
    show_default=True,
    help="Measure a disturbed model again (later, after a back-off) until this many attempts were disturbed.",
)
@click.option(
    "--passes",
    type=int,
    default=PROFILE_PASSES,
    show_default=True,
    help="Visit every model this many times, one pass over all of them after another; a model's latency "
    "is the median of its undisturbed visits (as calibrate's). One visit is faster but noisier: "
    "see docs/protocol.md.",
)
@db_option
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="One JSON line per measurement on stdout.")
def profile_cmd(
    specs_file: str,
    device_names: str,
    runtime: str,
    threads: Optional[int],
    precision: str,
    repeat: int,
    min_repeat_ms: float,
    energy: str,
    timeout_s: float,
    max_attempts: int,
    affinity: Optional[str],
    disturbed_share: float,
    max_disturbed: int,
    passes: int,
    db_path: str,
    inventory_path: Optional[str],
    as_json: bool,
) -> None:
    """Export (cached), ship and measure specs on devices; every result is stored as it arrives.

    Every model is visited --passes times, one pass over all models after another (visits spread
    in time average out a device's slow drifts); its latency is the median of its undisturbed
    visits, the one definition calibrate, predict and the report use (nnflash_agent.stats).
    Resumable: a rerun skips what was measured ok and retries failures up to --max-attempts.
    A measurement the agent found disturbed (other processes competed for the CPUs, stolen time,
    throttling) is stored as such and measured again later, up to --max-disturbed times.
    Ctrl-C stops cleanly (measurements in flight are finished and stored).
    """
    if max_disturbed < 1:
        raise ConfigError(f"--max-disturbed: must be a positive integer, got {max_disturbed}")
    if passes < 1:
        raise ConfigError(f"--passes: must be a positive integer, got {passes}")
    settings = _settings(
        runtime, threads, repeat, min_repeat_ms, timeout_s, energy, precision, affinity, disturbed_share
    )
    specs = load_specs_jsonl(specs_file)
    devices = devices_from(load_inventory(inventory_path), device_names)
    console = Console(stderr=True)
    done = profile_in_passes(
        specs,
        devices,
        settings,
        db_path,
        artifacts_dir_for(db_path),
        passes=passes,
        connect=functools.partial(make_connection, **connection_options()),
        max_attempts=max_attempts,
        max_disturbed=max_disturbed,
        args={"command": "profile", "specs_file": str(Path(specs_file).resolve())},
        observer_for=lambda k: ProgressView(
            console, as_json=as_json, label=f" pass {k + 1}/{passes}" if passes > 1 else ""
        ),
    )
    print_summary(done, console)
    if done.interrupted_pass is not None:
        sys.exit(130)
    if any(r.error for c in done.campaigns for r in c.devices.values()):
        sys.exit(1)


@click.command("results")
@db_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option("--device", default=None, help="Only this device.")
@click.option("--status", default=None, help="Only this status (ok, timeout, ...).")
def results_cmd(db_path: str, as_json: bool, as_csv: bool, device: Optional[str], status: Optional[str]) -> None:
    """Export measurements from the results database.

    The table ends with how many measurements had each status; ``disturbed`` ones (other
    processes competed for the device's CPUs, stolen time, throttling) are stored with their
    figures but never used as a latency. With --json or --csv that line goes to stderr."""
    if as_json and as_csv:
        raise ConfigError("choose one of --json and --csv")
    if not Path(db_path).exists():
        raise ConfigError(f"--db: {db_path} does not exist")
    store = ResultsDB(db_path, readonly=True)
    try:
        filters = {k: v for k, v in (("device", device), ("status", status)) if v is not None}
        rows = store.export_rows(**filters)
    finally:
        store.close()
    counts: dict[str, int] = {"ok": 0, "disturbed": 0}
    for r in rows:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    order = sorted(counts, key=lambda st: (st != "ok", st != "disturbed", st))
    tally_line = f"{len(rows)} measurement(s): " + ", ".join(f"{counts[st]} {st}" for st in order)
    if as_csv:
        click.echo(rows_to_csv_text(rows), nl=False)
        click.echo(tally_line, err=True)
        return
    if as_json:
        for r in rows:
            emit_json(r)
        click.echo(tally_line, err=True)
        return
    t = Table(title=f"{len(rows)} measurement(s) in {db_path}")
    for col in ("spec_id", "device", "runtime", "threads", "precision", "status", "median ms", "p90 ms", "energy mJ"):
        t.add_column(col)
    for r in rows:

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}"

        t.add_row(
            str(r.get("spec_id")),
            str(r.get("device")),
            str(r.get("runtime")),
            str(r.get("threads") or "-"),
            str(r.get("precision") or "fp32"),
            str(r.get("status")),
            f(r.get("latency_ms_median")),
            f(r.get("latency_ms_p90")),
            f(r.get("energy_mj")),
        )
    Console().print(t)
    click.echo(tally_line)


def register(cli: click.Group) -> None:
    for cmd in (export_cmd, profile_cmd, results_cmd):
        cli.add_command(cmd)
