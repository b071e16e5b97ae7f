"""`nnflash run`: the main job, end to end on one device (the built-in `local` by default)."""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click
from rich.console import Console

from nnflash.controller.campaign import MeasureSettings
from nnflash.controller.commands.campaign_view import ProgressView, print_summary
from nnflash.controller.commands.common import (
    artifacts_dir_for,
    connection_options,
    db_option,
    devices_from,
    inventory_option,
    load_inventory,
)
from nnflash.controller.errors import ConfigError
from nnflash.controller.profiling import run_campaign
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import make_connection
from nnflash.models.spec import AnySpec
from nnflash_agent.runners import RUNTIMES


@dataclass(frozen=True)
class RunPlan:
    """NN-Mass targets spread across the flash space's range (0 .. ~1000), candidates per target,
    and how long each model is timed."""

    targets: tuple[float, ...]
    per_target: int
    repeat: int
    min_repeat_ms: float


QUICK = RunPlan((100.0, 300.0, 500.0, 700.0), per_target=3, repeat=10, min_repeat_ms=20.0)
FULL = RunPlan(
    (50.0, 150.0, 250.0, 350.0, 450.0, 550.0, 650.0, 750.0, 850.0), per_target=6, repeat=20, min_repeat_ms=50.0
)


@click.command("run")
@click.option(
    "--device", "device_names", default="local", show_default=True, help="Device(s) to profile on, comma-separated."
)
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="Inference threads.")
@click.option("--space", "space_name", default="flash", show_default=True, help="Search space.")
@click.option("--quick", is_flag=True, help="A small run (12 models, about two minutes here).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the candidate generator.")
@db_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="nnflash-out",
    show_default=True,
    help="Where the candidates and the HTML report go.",
)
@inventory_option
def run_cmd(
    device_names: str,
    runtime: str,
    threads: int,
    space_name: str,
    quick: bool,
    seed: int,
    db_path: str,
    out_dir: str,
    inventory_path: Optional[str],
) -> None:
    """Generate candidates across a range of NN-Mass targets, export them, profile them on the
    device, store every measurement, and write an HTML report (latency against NN-Mass, NN-Degree
    and MACs; per-device tables).

    Rerunning with the same options resumes: models already measured are not measured again.
    """
    from nnflash.controller.commands.models_cmds import write_jsonl_atomic
    from nnflash.controller.report import write_report
    from nnflash.models.space import generate, get_space

    if threads < 1:
        raise ConfigError(f"--threads: must be a positive integer, got {threads}")
    plan = QUICK if quick else FULL
    console = Console(stderr=True)
    t0 = time.perf_counter()
    space = get_space(space_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs: list[AnySpec] = []
    seen: set[str] = set()
    for k, target in enumerate(plan.targets):
        for s in generate(space, plan.per_target, target_mass=target, tolerance=0.02, seed=seed + k):
            if s.spec_id not in seen:
                seen.add(s.spec_id)
                specs.append(s)
    cand_path = out / "candidates.jsonl"
    write_jsonl_atomic(str(cand_path), (s.to_json_line() for s in specs))
    console.print(
        f"generated {len(specs)} candidates for NN-Mass targets "
        f"{', '.join(f'{t:g}' for t in plan.targets)} (+-2%) -> {cand_path}"
    )
    devices = devices_from(load_inventory(inventory_path), device_names)
    settings = MeasureSettings(runtime=runtime, threads=threads, repeat=plan.repeat, min_repeat_ms=plan.min_repeat_ms)
    result = run_campaign(
        specs,
        devices,
        settings,
        db_path,
        artifacts_dir_for(db_path),
        connect=functools.partial(make_connection, **connection_options()),
        max_attempts=2,
        args={"command": "run", "quick": quick, "seed": seed},
        observer=ProgressView(console),
    )
    print_summary(result, console)
    store = ResultsDB(db_path)
    try:
        report = write_report(
            out / "report.html",
            store,
            title=f"nnflash run on {device_names}",
            spec_ids=[s.spec_id for s in specs],
            notes=[
                f"{len(specs)} candidates from space {space.name}, runtime {runtime}, {threads} thread(s), seed {seed}."
            ],
        )
    finally:
        store.close()
    console.print(
        f"report: {report.resolve()}  (database: {Path(db_path).resolve()}, {time.perf_counter() - t0:.0f} s in all)"
    )
    if result.interrupted:
        sys.exit(130)
    if any(r.error for r in result.devices.values()):
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(run_cmd)
