"""`nnflash calibrate` and `nnflash predict`: cost models fitted from measurements, and used."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Optional

import click

from nnflash.calibration.errors import CostModelError
from nnflash.controller.commands.common import (
    check_disturbed_share,
    check_precision,
    counting_options,
    disturbance_options,
    parse_affinity,
    precision_option,
)
from nnflash.controller.store import DEFAULT_DB_NAME
from nnflash_agent.runners import RUNTIMES


def _emit(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


def _warn(msg: str) -> None:
    click.echo(f"nnflash: warning: {msg}", err=True)


@click.command("predict")
@click.option(
    "--cost",
    "cost_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Cost model (JSON) written by `nnflash calibrate`.",
)
@click.argument("specs_file", metavar="SPECS.jsonl")
@click.option("--device", default=None, help="Warn if the cost model was calibrated for another device.")
@click.option("--runtime", default=None, help="Warn if the cost model was calibrated for another runtime.")
@click.option("--threads", type=int, default=None, help="Warn if calibrated for another thread count.")
@click.option("--precision", default=None, help="Warn if calibrated for another precision (fp32, int8).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per spec.")
def predict_cmd(
    cost_path: str,
    specs_file: str,
    device: Optional[str],
    runtime: Optional[str],
    threads: Optional[int],
    precision: Optional[str],
    as_json: bool,
) -> None:
    """Predict the latency (and energy, where the model has it) of every spec in SPECS.jsonl.

    The latency is the one `nnflash calibrate` fitted and `nnflash profile` measures: the median of
    a model's undisturbed repeats and visits (nnflash_agent.stats)."""
    from nnflash.calibration import check_compatible, load_model
    from nnflash.models.spec import load_specs_jsonl

    model = load_model(cost_path)
    for w in check_compatible(model, device=device, runtime=runtime, threads=threads, precision=precision):
        _warn(w)
    specs = load_specs_jsonl(specs_file)
    rows: list[dict[str, Any]] = []
    if specs:
        lat = model.predict_latency(specs)
        energy = model.predict(specs) if model.target == "energy_mj" else None
        for i, s in enumerate(specs):
            row: dict[str, Any] = {"spec_id": s.spec_id, "latency_ms": float(lat[i])}
            if energy is not None:
                row["energy_mj"] = float(energy[i])
            rows.append(row)
    if as_json:
        for row in rows:
            _emit(row)
        return
    from rich.console import Console
    from rich.table import Table

    meta = model.metadata_
    t = Table(
        title=f"{len(rows)} prediction(s), {model.kind} model for "
        f"{meta.get('device', '?')} / {meta.get('runtime', '?')} / "
        f"{meta.get('threads', '?')} thread(s)"
    )
    t.add_column("spec_id")
    t.add_column("latency ms", justify="right")
    if model.target == "energy_mj":
        t.add_column("energy mJ", justify="right")
    for row in rows:
        cells = [row["spec_id"], f"{row['latency_ms']:.3f}"]
        if "energy_mj" in row:
            cells.append(f"{row['energy_mj']:.3f}")
        t.add_row(*cells)
    Console().print(t)


def _profile(
    specs: list[Any],
    *,
    device: str,
    runtime: str,
    threads: Optional[int],
    db_path: str,
    inventory: Optional[str],
    energy: str,
    passes: int = 1,
    repeat: int = 20,
    min_repeat_ms: float = 50.0,
    precision: str = "fp32",
    affinity: Optional[tuple[int, ...]] = None,
    disturbed_share: Optional[float] = None,
) -> list[dict[str, Any]]:
    """Measure ``specs`` on ``device`` in ``passes`` passes (:func:`profile_in_passes`) with
    progress bars on stderr; the stored rows of these specs, every visit. An interrupted pass
    ends the calibration with a one-line error (what was measured is stored; a rerun resumes)."""
    from rich.console import Console

    from nnflash.controller.campaign import MeasureSettings, default_disturbed_share
    from nnflash.controller.commands.campaign_view import ProgressView
    from nnflash.controller.commands.common import (
        artifacts_dir_for,
        connection_options,
        devices_from,
        load_inventory,
    )
    from nnflash.controller.profiling import profile_in_passes
    from nnflash.controller.transport import make_connection

    devices = devices_from(load_inventory(inventory), device)
    settings = MeasureSettings(
        runtime=runtime,
        threads=threads,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        energy=energy,
        precision=precision,
        affinity=affinity,
        disturbed_share_max=default_disturbed_share() if disturbed_share is None else disturbed_share,
    )
    console = Console(stderr=True)
    done = profile_in_passes(
        specs,
        devices,
        settings,
        db_path,
        artifacts_dir_for(db_path),
        passes=passes,
        connect=functools.partial(make_connection, **connection_options()),
        args={"command": "calibrate"},
        observer_for=lambda k: ProgressView(console, label=f" pass {k + 1}/{passes}" if passes > 1 else ""),
    )
    if done.interrupted_pass is not None:
        raise CostModelError(
            f"calibration interrupted in pass {done.interrupted_pass} of {passes}; what was measured is stored in "
            f"{db_path}: run the same command again to resume"
        )
    return done.rows


def _stored_specs(db_path: str, spec_ids: set[str]) -> dict[str, Any]:
    from nnflash.controller.store import ResultsDB
    from nnflash.models.spec import parse_spec

    store = ResultsDB(db_path, readonly=True)
    out = {}
    try:
        for sid in sorted(spec_ids):
            rec = store.get_spec(sid)
            if rec is not None:
                out[sid] = parse_spec(rec["json"])
    finally:
        store.close()
    return out


def _device_facts(db_path: str, device: str) -> Optional[dict[str, Any]]:
    from nnflash.controller.store import ResultsDB

    if not Path(db_path).exists():
        return None
    store = ResultsDB(db_path, readonly=True)
    try:
        rec = store.latest_device_facts(device)
    finally:
        store.close()
    return dict(rec) if isinstance(rec, dict) else None


@click.command("calibrate")
@click.option("--device", required=True, help="Device name (from the inventory; `local` is built in).")
@click.option(
    "--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True, help="Runtime on the device."
)
@click.option("--threads", type=int, default=None, help="Inference threads (default: the runtime's).")
@precision_option
@click.option("--budget", type=int, default=25, show_default=True, help="Models to profile.")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    default=DEFAULT_DB_NAME,
    show_default=True,
    help="Results database (SQLite).",
)
@click.option(
    "--inventory", "inventory_path", type=click.Path(dir_okay=False), default=None, help="Device inventory (TOML)."
)
@click.option(
    "--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write the cost model (JSON)."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Predicted-vs-measured plot (PNG). Default: next to --out, with .png.",
)
@click.option("--from-db", is_flag=True, help="Refit from measurements already stored; profile nothing.")
@click.option(
    "--space",
    "space_name",
    default="flash",
    show_default=True,
    help="Search space the calibration models are drawn from.",
)
@click.option(
    "--model", "model_kind", default="roofline", show_default=True, help="Latency model: roofline, linear or macs."
)
@click.option("--energy", default="none", show_default=True, help="Energy meter on the device.")
@click.option(
    "--pool", type=int, default=3000, show_default=True, help="Candidates drawn from the space to choose from."
)
@click.option(
    "--passes",
    type=int,
    default=5,
    show_default=True,
    help="Measure every model this many times, one pass over all of them after another; "
    "a model's latency is the median of its undisturbed passes (nnflash_agent.stats).",
)
@counting_options(10, 25.0, "Timed repeats per model and pass.")
@disturbance_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def calibrate_cmd(
    device: str,
    runtime: str,
    threads: Optional[int],
    precision: str,
    budget: int,
    db_path: str,
    inventory_path: Optional[str],
    out_path: str,
    plot_path: Optional[str],
    from_db: bool,
    space_name: str,
    model_kind: str,
    energy: str,
    pool: int,
    passes: int,
    repeat: int,
    min_repeat_ms: float,
    affinity: Optional[str],
    disturbed_share: float,
    seed: int,
    as_json: bool,
) -> None:
    """Profile a budget of well-spread models on a device, fit a cost model, cross-validate it.

    \b
    Chooses models that cover the space (size, depth, width, skip density), then adds those where
    bootstrap fits disagree most; every measurement goes through the campaign runner and the
    database, so an interrupted calibration resumes. Each round measures its models in --passes
    passes, one after another. A pass the agent found disturbed (other processes competing for
    the CPUs, stolen time, throttling) is measured again later and never fitted; a model's latency
    is the median of its undisturbed passes, the definition profile, predict and the report share
    (nnflash_agent.stats). --from-db refits from stored measurements (every stored ok visit).
    """
    from nnflash.calibration import COST_MODELS
    from nnflash.calibration.crossval import format_metrics, plot_predicted_vs_measured
    from nnflash.calibration.workflow import calibrate, fit_measurements, usable_rows

    if model_kind not in COST_MODELS or COST_MODELS[model_kind].target != "latency_ms":
        raise CostModelError(f"--model: must be a latency model (roofline, linear, macs), got {model_kind!r}")
    check_precision(runtime, precision)
    if threads is not None and threads < 1:
        raise CostModelError(f"--threads: must be a positive integer, got {threads}")
    if budget < 1:
        raise CostModelError(f"--budget: must be a positive integer, got {budget}")
    if passes < 1:
        raise CostModelError(f"--passes: must be a positive integer, got {passes}")
    if repeat < 1:
        raise CostModelError(f"--repeat: must be a positive integer, got {repeat}")
    if not min_repeat_ms >= 0:
        raise CostModelError(f"--min-repeat-ms: must be >= 0, got {min_repeat_ms}")
    out = Path(out_path)
    if not out.parent.exists():
        raise CostModelError(f"--out: directory {out.parent} does not exist")
    log = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    if from_db:
        if not Path(db_path).exists():
            raise CostModelError(f"--db: {db_path} does not exist (nothing to refit from)")
        from nnflash.controller.profiling import stored_rows

        rows = stored_rows(db_path, [device], runtime, threads, precision=precision)
        if not rows:
            raise CostModelError(
                f"no ok measurements in {db_path} for device {device!r}, runtime {runtime!r}, threads {threads}, "
                f"precision {precision}"
            )
        specs_by_id = _stored_specs(db_path, {str(r["spec_id"]) for r in rows})
        specs, lat, en, skipped = usable_rows(specs_by_id, rows)
        if specs and all(getattr(s, "family", None) == "nb201" for s in specs):
            space_name = "nb201"  # imported NAS-Bench-201 tables: record the space the models belong to
        result = fit_measurements(specs, lat, en, model=model_kind, seed=seed)
        result.skipped = skipped
    else:
        if pool < budget:
            raise CostModelError(f"--pool: must be at least --budget ({budget}), got {pool}")
        from nnflash.models.space import get_space

        candidates = get_space(space_name).sample(pool, seed=seed)
        cpus = parse_affinity(affinity)
        check_disturbed_share(disturbed_share)

        def profile(specs: list[Any]) -> list[dict[str, Any]]:
            return _profile(
                specs,
                device=device,
                runtime=runtime,
                threads=threads,
                db_path=db_path,
                inventory=inventory_path,
                energy=energy,
                passes=passes,
                repeat=repeat,
                min_repeat_ms=min_repeat_ms,
                precision=precision,
                affinity=cpus,
                disturbed_share=disturbed_share,
            )

        result = calibrate(candidates, budget, profile, model=model_kind, seed=seed, log=log)
    model = result.model
    facts = _device_facts(db_path, device)
    model.save(
        out,
        device=device,
        device_facts=facts,
        runtime=runtime,
        threads=threads,
        precision=precision,
        cv=result.cv,
        energy_cv=result.energy_cv,
        space=space_name,
        input_shape=_common(s.input_shape for s in result.specs),
        num_classes=_common(s.num_classes for s in result.specs),
        budget=budget,
        measurement=None if from_db else {"passes": passes, "repeat": repeat, "min_repeat_ms": min_repeat_ms},
    )
    plot = Path(plot_path) if plot_path else out.with_suffix(".png")
    plot_predicted_vs_measured(
        result.latency_ms, result.cv_predicted, plot, title=f"{model_kind} on {device} (cross-validated)"
    )
    try:
        from nnflash.controller.store import ResultsDB

        store = ResultsDB(db_path)
        try:
            store.add_cost_model(device, runtime, threads, out.read_text(), precision=precision)
        finally:
            store.close()
    except Exception as e:  # the file is the product; the database copy is a convenience
        _warn(f"cost model not recorded in {db_path}: {e}")
    report = {
        "device": device,
        "runtime": runtime,
        "threads": threads,
        "precision": precision,
        "model": model_kind,
        "measured": len(result.specs),
        "passes": None if from_db else passes,
        "skipped": result.skipped,
        "cv": result.cv,
        "energy_cv": result.energy_cv,
        "parameters": model.report(),
        "out": str(out),
        "plot": str(plot),
    }
    if as_json:
        _emit(_clean(report))
        return
    click.echo(
        f"{len(result.specs)} models measured on {device} ({runtime}, threads {threads}, {precision})"
        + ("" if from_db else f" in {passes} pass{'es' if passes > 1 else ''}, the median of the undisturbed ones")
        + (f"; {len(result.skipped)} skipped (failed)" if result.skipped else "")
    )
    click.echo(f"cross-validated latency ({int(result.cv['folds'])} folds): {format_metrics(result.cv)}")
    if result.energy_cv is not None:
        click.echo(f"cross-validated energy: {format_metrics(result.energy_cv)}")
    click.echo("parameters: " + json.dumps(_clean(model.report()), sort_keys=True))
    click.echo(f"cost model: {out}\nplot: {plot}")


def _common(values: Any) -> Any:
    """The value every measured spec shares (a list for shapes), or None when they differ."""
    vals = {json.dumps(list(v) if isinstance(v, tuple) else v) for v in values}
    return json.loads(vals.pop()) if len(vals) == 1 else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def register(cli: click.Group) -> None:
    for cmd in (calibrate_cmd, predict_cmd):
        cli.add_command(cmd)
