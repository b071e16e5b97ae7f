"""`nnflash search`: the best networks (and deployments) under latency, energy and size limits
(parse, call :mod:`nnflash.controller.codesign`, print)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click

from nnflash.controller.commands.common import db_option, emit_json
from nnflash.controller.errors import ConfigError

METHODS = ("exact", "shgo", "random")
OBJECTIVES = ("nn-degree", "nn-mass")


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _line(design: Any, artifacts: Optional[list[dict[str, Any]]]) -> dict[str, Any]:
    row = design.to_dict()
    row["deployment"].pop("latency_model", None)
    row["deployment"].pop("energy_model", None)
    if row.get("area_mm2") is None:
        row.pop("area_mm2", None)  # only hardware models have an area
    if artifacts is not None:
        row["artifacts"] = [a for a in artifacts if a["spec_id"] == design.spec_id]
    return row


@click.command("search")
@click.option(
    "--cost",
    "cost_paths",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Cost model (JSON from `nnflash calibrate`); repeat it for several deployments of one device "
    "(runtimes, threads, precisions): the search chooses among them.",
)
@click.option(
    "--accelerator",
    "accel_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Instead of --cost: co-design the network with an in-memory-computing accelerator described by "
    "ACCEL.json (parameters and knob ranges; docs/accelerator.md), under --max-area-mm2, --max-latency-ms, "
    "--max-energy-mj, --max-params, --max-macs.",
)
@click.option(
    "--min-adc-bits",
    type=int,
    default=5,
    show_default=True,
    help="With --accelerator: the coarsest ADC allowed (the model does not know the accuracy a coarse ADC loses).",
)
@click.option(
    "--samples",
    type=int,
    default=20_000,
    show_default=True,
    help="With --accelerator: networks sampled, each scored on every hardware configuration.",
)
@click.option("--dataset", default=None, help="Search the dataset's default space (with its classes).")
@click.option(
    "--space",
    "space_name",
    default=None,
    help="Search space (default: the cost models' own, else flash); nb201 (NAS-Bench-201's 15,625 cells) is "
    "enumerated exactly.",
)
@click.option(
    "--accuracy",
    "accuracy_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Maximize the predicted accuracy of this predictor (`nnflash accuracy fit`); a multi predictor "
    "re-ranks the --rerank best NN-Degree designs.",
)
@click.option(
    "--objective",
    "objective_name",
    type=click.Choice(OBJECTIVES),
    default=None,
    help="Training-free objective to maximize (default: nn-degree, FLASH's).",
)
@click.option("--max-latency-ms", type=float, default=None, help="Predicted latency limit (ms).")
@click.option("--max-energy-mj", type=float, default=None, help="Predicted energy limit (mJ per inference).")
@click.option("--max-params", type=float, default=None, help="Parameter count limit.")
@click.option("--max-macs", type=float, default=None, help="Multiply-accumulate limit.")
@click.option(
    "--max-peak-memory-mb", type=float, default=None, help="Largest live activation set (MB, float32; dense spaces)."
)
@click.option("--max-area-mm2", type=float, default=None, help="Area limit (hardware models with an area only).")
@click.option(
    "--margin",
    type=float,
    default=None,
    help="Keep predicted latency/energy this fraction inside their limits (default: the cost models' "
    "cross-validated 90th-percentile error).",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="exact",
    show_default=True,
    help="exact, shgo or random on the dense spaces; space nb201 is searched by exact (enumeration) only.",
)
@click.option("--top", "top_k", type=int, default=1, show_default=True, help="Designs to return, best first.")
@click.option("--rerank", type=int, default=20, show_default=True, help="With a multi predictor: designs it re-ranks.")
@click.option(
    "--pareto",
    is_flag=True,
    help="Return the exact objective-vs-latency front instead (every design on it) and plot it.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --pareto: the PNG (default: --out with .png, else pareto.png).",
)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the designs (JSONL).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per design on stdout.")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Export the designs (verified), with the weights `nnflash train` stored in --db where trained.",
)
@click.option("--format", "formats", default="onnx", show_default=True, help="With --export: onnx, tflite.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Dataset files (multi's proxies).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shgo and random methods.")
@db_option
def search_cmd(
    cost_paths: tuple[str, ...],
    accel_path: Optional[str],
    min_adc_bits: int,
    samples: int,
    dataset: Optional[str],
    space_name: Optional[str],
    accuracy_path: Optional[str],
    objective_name: Optional[str],
    max_latency_ms: Optional[float],
    max_energy_mj: Optional[float],
    max_params: Optional[float],
    max_macs: Optional[float],
    max_peak_memory_mb: Optional[float],
    max_area_mm2: Optional[float],
    margin: Optional[float],
    method: str,
    top_k: int,
    rerank: int,
    pareto: bool,
    plot_path: Optional[str],
    out_path: Optional[str],
    as_json: bool,
    export_dir: Optional[str],
    formats: str,
    data_dir: Optional[str],
    seed: int,
    db_path: str,
) -> None:
    """The best networks of a space under latency, energy and size limits, and the deployment
    (runtime, threads, precision) to run each with, from calibrated cost models.

    \b
    Every design returned is re-checked against every limit with the full cost model. Examples:
      nnflash search --cost pi-ort4.json --max-latency-ms 20 --top 3
      nnflash search --cost pi-ort1.json --cost pi-tflite-int8.json --max-latency-ms 20 --max-params 1e6
      nnflash search --cost pi.json --pareto --plot front.png --out front.jsonl
      nnflash search --cost pi.json --max-latency-ms 20 --export found/ --format onnx,tflite
      nnflash search --accelerator accel.json --max-area-mm2 20 --top 3
      nnflash search --space nb201 --cost pi4.json --accuracy acc.json --max-latency-ms 20
    """
    from nnflash.controller.codesign import SearchRequest, export_designs, plot_front, run_search
    from nnflash.search import Limits

    if bool(cost_paths) == bool(accel_path):
        raise ConfigError("give --cost COST.json (a device's cost models) or --accelerator ACCEL.json, one of them")
    if not accel_path and (min_adc_bits != 5 or samples != 20_000):
        raise ConfigError("--min-adc-bits and --samples apply with --accelerator only")

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    if export_dir is None and formats != "onnx":
        raise ConfigError("--format applies with --export only")
    if plot_path is not None and not pareto:
        raise ConfigError("--plot applies with --pareto only")
    if out_path is not None and not Path(out_path).parent.exists():
        raise ConfigError(f"--out: directory {Path(out_path).parent} does not exist")
    limits = Limits(
        max_latency_ms=max_latency_ms,
        max_energy_mj=max_energy_mj,
        max_params=max_params,
        max_macs=max_macs,
        max_peak_memory_mb=max_peak_memory_mb,
        max_area_mm2=max_area_mm2,
    )
    if accel_path:
        for flag, given in (
            ("--pareto", pareto),
            ("--export", export_dir is not None),
            ("--margin", margin is not None),
            ("--max-peak-memory-mb", max_peak_memory_mb is not None),
            ("--method", method != "exact"),
        ):
            if given:
                raise ConfigError(
                    f"{flag} does not apply with --accelerator (export the designs with `nnflash export "
                    "designs.jsonl`: it reads the search's lines)"
                    if flag == "--export"
                    else f"{flag} does not apply with --accelerator"
                )
        _accelerator(
            accel_path, limits, objective_name, accuracy_path, space_name, dataset, top_k, samples, min_adc_bits,
            seed, out_path, as_json,
        )  # fmt: skip
        return
    request = SearchRequest(
        cost_paths=tuple(cost_paths),
        limits=limits,
        method=method,
        top_k=top_k,
        margin=margin,
        objective_name=objective_name,
        accuracy_path=accuracy_path,
        space_name=space_name,
        dataset=dataset,
        pareto=pareto,
        rerank=rerank,
        seed=seed,
        data_dir=data_dir,
        db_path=db_path if Path(db_path).exists() else None,
    )
    outcome = run_search(request)
    artifacts = None
    if export_dir is not None:
        artifacts = export_designs(outcome.designs, export_dir, fmts, db_path=request.db_path, dataset=dataset)
    lines = [_line(d, artifacts) for d in outcome.designs]
    if out_path is not None:
        from nnflash.controller.commands.models_cmds import write_jsonl_atomic

        write_jsonl_atomic(out_path, (json.dumps(r, separators=(",", ":")) for r in lines))
    plot = None
    if pareto:
        default = Path(out_path).with_suffix(".png") if out_path else Path("pareto.png")
        plot = plot_front(outcome, plot_path or default, seed=seed)
    _summary(outcome, plot, out_path, artifacts)
    if as_json:
        for r in lines:
            emit_json(r)
    else:
        _table(outcome)
    if artifacts is not None and any("error" in a for a in artifacts):
        sys.exit(1)


def _accelerator(
    accel_path: str,
    limits: Any,
    objective_name: Optional[str],
    accuracy_path: Optional[str],
    space_name: Optional[str],
    dataset: Optional[str],
    top_k: int,
    samples: int,
    min_adc_bits: int,
    seed: int,
    out_path: Optional[str],
    as_json: bool,
) -> None:
    from nnflash.controller.codesign import run_accelerator_search

    out = run_accelerator_search(
        accel_path,
        limits,
        objective_name=objective_name,
        accuracy_path=accuracy_path,
        space_name=space_name,
        dataset=dataset,
        top_k=top_k,
        samples=samples,
        min_adc_bits=min_adc_bits,
        seed=seed,
    )
    if out_path is not None:
        from nnflash.controller.commands.models_cmds import write_jsonl_atomic

        write_jsonl_atomic(out_path, (json.dumps(r, separators=(",", ":")) for r in out.lines))
    knobs = ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in out.knobs.items())
    click.echo(
        f"accelerator co-design: {out.samples:,} networks of space {out.space.name} x hardware ({knobs}), "
        f"ADC >= {out.min_adc_bits} bits: {out.evaluated:,} pairs scored, {out.feasible:,} feasible, "
        f"in {out.time_s:.1f} s (sampled: good designs, not a proven optimum)",
        err=True,
    )
    if out_path is not None:
        click.echo(f"designs: {out_path}", err=True)
    if as_json:
        for r in out.lines:
            emit_json(r)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    t = Table(title=f"{len(out.lines)} design(s), {out.objective.name}, space {out.space.name}, IMC accelerator")
    for c in ("#", "spec_id", "hardware", out.objective.name, "area mm2", "latency ms", "energy uJ", "params", "MACs"):
        t.add_column(c, justify="left" if c in ("spec_id", "hardware") else "right", no_wrap=True)
    for i, r in enumerate(out.lines, 1):
        hw = _hardware(r["deployment"]["knobs"])
        t.add_row(
            str(i), r["spec_id"], hw, _fmt(r["objective"]["value"], ".5g"), _fmt(r["area_mm2"], ".2f"),
            _fmt(r["latency_ms"], ".3f"), _fmt(1000 * r["energy_mj"], ".1f"), _si(r["params"]), _si(r["macs"]),
        )  # fmt: skip
    console.print(t)


def _hardware(knobs: dict[str, Any]) -> str:
    """``256x256 ADC 5b 2b/cell`` (and any other knob as key=value)."""
    k = dict(knobs)
    parts = []
    if "subarray_rows" in k:
        rows = k.pop("subarray_rows")
        parts.append(f"{rows}x{k.pop('subarray_cols', rows)}")
    if "adc_bits" in k:
        parts.append(f"ADC {k.pop('adc_bits')}b")
    if "cell_bits" in k:
        parts.append(f"{k.pop('cell_bits')}b/cell")
    return " ".join(parts + [f"{a}={b}" for a, b in k.items()])


def _summary(outcome: Any, plot: Optional[Path], out_path: Optional[str], artifacts: Any) -> None:
    err = lambda s: click.echo(s, err=True)  # noqa: E731
    n = len(outcome.designs)
    if plot is not None:
        err(f"exact front: {n} design(s) on space {outcome.space.name}; plot: {plot}")
    else:
        build = f", tables {outcome.build_s:.2f} s" if outcome.build_s else ""
        err(
            f"{outcome.method}: {n} design(s) on space {outcome.space.name} in {outcome.time_s:.3f} s{build}, "
            f"{outcome.evaluations} full evaluations; margin {100 * outcome.margin:.1f}% ({outcome.margin_source})"
            + (f"; re-ranked by the {outcome.reranked_by} predictor" if outcome.reranked_by else "")
        )
    if out_path is not None:
        err(f"designs: {out_path}")
    if artifacts is not None:
        ok = sum(1 for a in artifacts if "error" not in a)
        trained = sum(1 for a in artifacts if "error" not in a and a.get("weights"))
        err(f"exported {ok} file(s) ({trained} with trained weights), {len(artifacts) - ok} failed")
        for a in artifacts:
            if "error" in a:
                err(f"export of {a['spec_id']} to {a['format']} failed: {a['error']}")


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _table(outcome: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: wide enough for every column
        console = Console(width=max(console.width, 110))
    energy = any(d.energy_mj is not None for d in outcome.designs)
    name = "accuracy" if outcome.reranked_by else outcome.objective.name
    t = Table(title=f"{len(outcome.designs)} design(s), {name}, space {outcome.space.name}")
    cols = ["#", "spec_id", "deployment", name, "latency ms"] + (["energy mJ"] if energy else [])
    for c in [*cols, "params", "MACs", "peak MB"]:
        t.add_column(c, justify="left" if c in ("spec_id", "deployment") else "right", no_wrap=True)
    for i, d in enumerate(outcome.designs, 1):
        cells = [str(i), d.spec_id, d.deployment.label, _fmt(d.objective, ".5g"), _fmt(d.latency_ms, ".3f")]
        if energy:
            cells.append(_fmt(d.energy_mj, ".3f"))
        t.add_row(*cells, _si(d.params), _si(d.macs), _fmt(d.peak_memory_mb, ".2f"))
    console.print(t)


def register(cli: click.Group) -> None:
    cli.add_command(search_cmd)
