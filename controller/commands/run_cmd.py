"""`nnflash run`: from a device to a recommended network measured on it, in one command.

The loop itself (calibrate, accuracy, search, verify, refit) is :mod:`nnflash.controller.runloop`;
the report is :mod:`nnflash.controller.run_report`. This module parses, calls and prints."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click
from rich.console import Console

from nnflash.controller.commands.common import (
    artifacts_dir_for,
    check_precision,
    connection_options,
    db_option,
    devices_from,
    inventory_option,
    load_inventory,
    precision_option,
)
from nnflash.controller.errors import ConfigError
from nnflash_agent.runners import RUNTIMES


def _numbers(text: Optional[str], name: str, kind: type = float) -> tuple[Any, ...]:
    """``"5,10,20"`` -> (5.0, 10.0, 20.0); a one-line error for anything else."""
    if text is None:
        return ()
    out = []
    for part in str(text).split(","):
        try:
            v = kind(part.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a comma-separated list of numbers, got {text!r}") from None
        if not v > 0 or v != v or v in (float("inf"),):
            raise ConfigError(f"{name}: must be positive, got {part.strip()!r}")
        out.append(v)
    return tuple(out)


@click.command("run")
@click.option("--device", default="local", show_default=True, help="Device to recommend for (`local` is built in).")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
@click.option(
    "--threads",
    "threads_text",
    default="1",
    show_default=True,
    help="Inference threads, or a list (1,2,4): the search then chooses the thread count with the network.",
)
@precision_option
@click.option("--dataset", default=None, help="Dataset the network is for (its default space and classes).")
@click.option("--space", "space_name", default=None, help="Search space (default: flash, or the dataset's).")
@click.option(
    "--max-latency-ms",
    "latency_text",
    default=None,
    help="Latency limit, or a list (5,10,20): the best design under each. None: a Pareto set, the best "
    "design under each of 8 limits (--quick: 6) across the latency range the calibration measured.",
)
@click.option("--max-energy-mj", type=float, default=None, help="Energy limit (needs --energy METER).")
@click.option("--max-params", type=float, default=None, help="Parameter limit.")
@click.option(
    "--accuracy",
    "accuracy_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Accuracy predictor (nnflash accuracy fit): flash or nnmass is the objective; multi re-ranks the "
    "10 best designs by NN-Degree under each limit. Default: NN-Degree, a proxy.",
)
@click.option(
    "--train-budget",
    type=int,
    default=None,
    help="Train this many networks of --dataset (default cifar10) first and fit a flash predictor on them "
    "(hours on a CPU; the estimate is shown before training starts).",
)
@click.option("--protocol", default=None, help="Training protocol for --train-budget (e.g. quick).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Dataset folder for training.")
@click.option(
    "--quick",
    is_flag=True,
    help="A smaller calibration (12 models, 2 passes of 5 repeats instead of 25 models, 5 passes of 10) and "
    "6 Pareto points instead of 8; no training.",
)
@click.option("--budget", type=int, default=None, help="Models to calibrate on (default 25; --quick 12).")
@click.option("--passes", type=int, default=None, help="Visits per measured model (default 5; --quick 2).")
@click.option("--repeat", type=int, default=None, help="Timed repeats per visit (default 10; --quick 5).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Most search-and-verify rounds.")
@click.option("--energy", default="none", show_default=True, help="Energy meter on the device.")
@click.option(
    "--busy-ok",
    is_flag=True,
    help="Keep visits the agent finds disturbed by other processes (figures still recorded): for a device "
    "shared with other work. Latencies then run high and noisy; the report says so.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@db_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="nnflash-out",
    show_default=True,
    help="Where report.html, designs.jsonl, the cost models and the exported designs go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@inventory_option
def run_cmd(
    device: str,
    runtime: str,
    threads_text: str,
    precision: str,
    dataset: Optional[str],
    space_name: Optional[str],
    latency_text: Optional[str],
    max_energy_mj: Optional[float],
    max_params: Optional[float],
    accuracy_path: Optional[str],
    train_budget: Optional[int],
    protocol: Optional[str],
    data_dir: Optional[str],
    quick: bool,
    budget: Optional[int],
    passes: Optional[int],
    repeat: Optional[int],
    rounds: int,
    energy: str,
    busy_ok: bool,
    seed: int,
    db_path: str,
    out_dir: str,
    as_json: bool,
    inventory_path: Optional[str],
) -> None:
    """Recommend networks for a device and measure them on it: the closed loop.

    \b
    1. calibrate: reuse the stored cost model of this device, runtime, threads, agent version and
       space when a spot check on 3 fresh models confirms it (median error <= 10%), else calibrate;
    2. accuracy: --accuracy, --train-budget N --protocol P, or NN-Degree (a proxy);
    3. search: the best design per latency limit, with the cost models' margin, or a Pareto set;
    4. verify: export and measure each design (the latency definition calibration uses); a design
       that breaks its limit or is predicted more than 10% off joins the cost model's training
       data, the model is refitted and the search runs again (at most --rounds rounds);
    5. report: OUT/report.html, OUT/designs.jsonl (and --json on stdout).

    Every measurement and cost model goes into the database as it happens: rerun the same command
    after Ctrl-C and it resumes; a run with other limits reuses the calibration.
    """
    from nnflash.controller.accuracy import dataset_space
    from nnflash.controller.run_report import summary, write_designs, write_run_report
    from nnflash.controller.runloop import FULL, QUICK, RunInterrupted, RunRequest, run_loop
    from nnflash.controller.transport import make_connection
    from nnflash.models.space import get_space

    t_start = time.perf_counter()
    threads = tuple(int(t) for t in _numbers(threads_text, "--threads", int))
    latency_limits = _numbers(latency_text, "--max-latency-ms")
    for name, val in (("--max-energy-mj", max_energy_mj), ("--max-params", max_params)):
        if val is not None and not val > 0:
            raise ConfigError(f"{name}: must be positive, got {val:g}")
    for name, val in (("--budget", budget), ("--passes", passes), ("--repeat", repeat)):
        if val is not None and val < 1:
            raise ConfigError(f"{name}: must be a positive integer, got {val}")
    if rounds < 1:
        raise ConfigError(f"--rounds: must be a positive integer, got {rounds}")
    if quick and train_budget is not None:
        raise ConfigError("--quick implies no training: drop --train-budget or --quick")
    if train_budget is not None and protocol is None:
        raise ConfigError("--train-budget needs --protocol (e.g. quick)")
    if max_energy_mj is not None and energy == "none":
        raise ConfigError("--max-energy-mj needs an energy meter (--energy METER)")
    check_precision(runtime, precision)
    out = Path(out_dir)
    if not out.parent.exists():
        raise ConfigError(f"--out: directory {out.parent} does not exist")
    space = dataset_space(dataset, space_name) if dataset else get_space(space_name or "flash")
    devices = devices_from(load_inventory(inventory_path), device)
    if len(devices) != 1:
        raise ConfigError("--device: give one device (the loop recommends for one device at a time)")
    console = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: console.print(s, markup=False, highlight=False))

    def estimate(plan: Any) -> None:
        hours = plan.estimate_s / 3600
        console.print(
            f"training {len(plan.todo)} network(s) ({len(plan.done)} already trained): about {hours:.1f} h "
            f"({plan.estimate_basis}); on a CPU this can take hours. Ctrl-C stops; rerun resumes.",
            markup=False,
        )

    from nnflash.controller.commands.campaign_view import ProgressView

    req = RunRequest(
        device=devices[0],
        space=space,
        db_path=db_path,
        out_dir=str(out),
        artifacts_dir=str(artifacts_dir_for(db_path)),
        runtime=runtime,
        threads=threads,
        precision=precision,
        latency_limits_ms=latency_limits,
        max_energy_mj=max_energy_mj,
        max_params=max_params,
        accuracy_path=accuracy_path,
        train_budget=train_budget,
        protocol=protocol,
        dataset=dataset,
        data_dir=data_dir,
        plan=_plan(QUICK if quick else FULL, budget, passes, repeat),
        rounds=rounds,
        energy=energy,
        seed=seed,
        measure={"disturbed_share_max": None} if busy_ok else {},
    )
    try:
        result = run_loop(
            req,
            connect=functools.partial(make_connection, **connection_options()),
            observer_for=None if as_json else (lambda label: ProgressView(console, label=label)),
            log=log,
            estimate=estimate,
        )
    except RunInterrupted as e:
        console.print(f"nnflash: {e}", markup=False)
        sys.exit(130)
    t_report = time.perf_counter()
    notes = [
        f"Run: {'--quick' if quick else 'full'} plan, seed {seed}"
        + (", --busy-ok: visits disturbed by other processes were kept." if busy_ok else ".")
    ]
    designs_path = write_designs(result, out / "designs.jsonl")
    report = write_run_report(result, out / "report.html", notes=notes)
    result.stage_s["report"] = time.perf_counter() - t_report
    result.stage_s["total"] = time.perf_counter() - t_start
    if as_json:
        click.echo(json.dumps(summary(result, report, designs_path), separators=(",", ":")))
        return
    for v in sorted(result.final.designs, key=lambda v: v.limit_ms or 0):
        obj = (
            f"{v.design.accuracy:.1%} predicted accuracy"
            if v.design.accuracy is not None
            else (f"NN-Degree {v.design.objective:.0f}")
        )
        meas = f"{v.measured_ms:.3f} ms measured" if v.measured_ms is not None else v.status
        lim = f"under {v.limit_ms:.3g} ms: " if v.limit_ms is not None else ""
        flag = "" if v.meets_limit is not False else "  BREAKS ITS LIMIT"
        click.echo(
            f"{lim}{v.design.spec_id} ({v.design.deployment.label}) {obj}, {v.design.latency_ms:.3f} ms predicted, "
            f"{meas}, {v.design.params:,} params{flag}"
        )
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_s.items())
    click.echo(f"{len(result.rounds)} round(s); {stages}")
    click.echo(f"report: {report.resolve()}\ndesigns: {designs_path.resolve()}")


def _plan(base: Any, budget: Optional[int], passes: Optional[int], repeat: Optional[int]) -> Any:
    import dataclasses

    changes = {k: v for k, v in (("budget", budget), ("passes", passes), ("repeat", repeat)) if v is not None}
    if budget is not None:
        changes["pool"] = max(base.pool, 40 * budget)
    return dataclasses.replace(base, **changes) if changes else base


def register(cli: click.Group) -> None:
    cli.add_command(run_cmd)
