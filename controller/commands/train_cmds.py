"""`nnflash train`: train specs on a dataset and store their accuracies (parse, call, print)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import click
from rich.console import Console

from nnflash.controller.commands.common import db_option
from nnflash.models.datasets import DATASETS
from nnflash.models.errors import SpecError
from nnflash.models.spec import AnySpec, parse_spec
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
    # the training engine (torch) loads only when this command runs, not for every nnflash command
    from nnflash.controller.commands.train_view import TrainView, summary
    from nnflash.controller.errors import ConfigError
    from nnflash.controller.training import make_executor, run_trainings
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
    summary(result, console)
    if result.interrupted:
        cmd = " ".join(shlex.quote(a) for a in ["nnflash", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
        console.print(
            f"[yellow]interrupted:[/] every finished training is stored; to resume, run {cmd} again "
            "(interrupted specs continue from their last epoch)"
        )
        click.get_current_context().exit(130)


def register(cli: click.Group) -> None:
    cli.add_command(train_cmd)
