"""CLI commands about architectures: metrics, space, generate, ldi."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import click
from rich.console import Console
from rich.table import Table

from nnflash.models.errors import SpaceError, SpecError
from nnflash.models.metrics import compute_metrics
from nnflash.models.spec import PRESETS, AnySpec, load_spec_file, preset
from nnflash_agent.fileio import atomic_path

if TYPE_CHECKING:
    from nnflash.models.space import AnySpace


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


def write_jsonl_atomic(path: str, lines: Iterable[str]) -> int:
    """Write lines to ``path`` through a temp file + rename, so a failure never leaves half a file."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        raise SpecError(f"--out: directory {p.parent} does not exist")
    n = 0
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def _load(spec_file: str | None, preset_name: str | None, width_mult: float | None) -> AnySpec:
    if (spec_file is None) == (preset_name is None):
        raise SpecError("give either a SPEC.json file or --preset NAME")
    if preset_name is not None:
        return preset(preset_name, width_mult)
    if width_mult is not None:
        raise SpecError("--width-mult: only applies with --preset")
    assert spec_file is not None
    return load_spec_file(spec_file)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


@click.command("metrics")
@click.argument("spec_file", required=False, metavar="[SPEC.json]")
@click.option(
    "--preset",
    "preset_name",
    metavar="NAME",
    help=f"A built-in architecture instead of a file: {', '.join(sorted(PRESETS))}.",
)
@click.option("--width-mult", type=float, default=None, help="Width multiplier for --preset (resnet, mobilenet_v2).")
@click.option("--layers", "show_layers", is_flag=True, help="Also list every layer with its MACs and bytes moved.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def metrics_cmd(
    spec_file: str | None, preset_name: str | None, width_mult: float | None, show_layers: bool, as_json: bool
) -> None:
    """Topology metrics (NN-Mass, NN-Density, NN-Degree), parameters and MACs of a spec.

    \b
    Examples:
      nnflash metrics examples/dense_reference.json
      nnflash metrics --preset mobilenet_v2 --width-mult 0.5 --json
    """
    spec = _load(spec_file, preset_name, width_mult)
    m = compute_metrics(spec)
    if show_layers:
        from nnflash.models.metrics import layer_table

        m["layer_table"] = [layer.to_dict() for layer in layer_table(spec)]
    if as_json:
        emit_json(m)
        return
    console = Console()
    t = Table(title=f"{spec.family} spec {spec.spec_id}", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    labels = {
        "nn_mass": "NN-Mass",
        "nn_density": "NN-Density (per cell)",
        "nn_degree": "NN-Degree",
        "params": "parameters",
        "macs": "MACs",
        "layers": "conv/linear layers",
        "bytes_weights": "weight bytes (fp32)",
        "bytes_activations": "activation bytes moved",
    }
    for k, label in labels.items():
        if k in m:
            t.add_row(label, _fmt(m[k]))
    console.print(t)
    if show_layers:
        lt = Table(title="layers")
        for col in ("name", "kind", "in", "out", "k", "s", "H_out", "params", "MACs", "bytes in+out"):
            lt.add_column(col, justify="right" if col not in ("name", "kind") else "left")
        for r in m["layer_table"]:
            lt.add_row(
                r["name"],
                r["kind"],
                str(r["in_ch"]),
                str(r["out_ch"]),
                str(r["kernel"]),
                str(r["stride"]),
                str(r["h_out"]),
                _fmt(r["params"]),
                _fmt(r["macs"]),
                _fmt(r["bytes_in"] + r["bytes_out"]),
            )
        console.print(lt)


@click.group("space")
def space_group() -> None:
    """Search spaces: count and sample configurations."""


@space_group.command("count")
@click.option("--space", "space_name", default="flash", show_default=True, help="Name of the search space.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def space_count(space_name: str, as_json: bool) -> None:
    """Count the distinct configurations of a space exactly."""
    from nnflash.models.space import Nb201Space, get_space

    space = get_space(space_name)
    n = space.count()
    if isinstance(space, Nb201Space):
        if as_json:
            emit_json({"space": space.name, "configurations": n, "edges": space.describe(), "isomorphic_merged": False})
            return
        click.echo(
            f"space {space.name}: {n:,} configurations (5 operations on each of the 6 edges of the NAS-Bench-201 "
            f"cell; isomorphic cells not merged, every architecture string counts once)"
        )
        return
    if as_json:
        emit_json({"space": space.name, "configurations": n, "cells": space.describe(), "conv": space.conv})
        return
    t = Table(title=f"space {space.name} ({space.conv} conv, input {list(space.input_shape)})")
    for col in ("cell", "depth", "width", "skip cap", "configurations"):
        t.add_column(col, justify="right")
    for c in space.describe():
        t.add_row(
            str(c["cell"]),
            f"{c['depths'][0]}..{c['depths'][1]}",
            ", ".join(map(str, c["widths"])),
            f"0..{c['tc'][1]}",
            f"{c['configurations']:,}",
        )
    Console().print(t)
    click.echo(f"distinct configurations: {n:,} ({n:.3e})")


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def _dataset_space(space_name: str | None, dataset: str | None) -> AnySpace:
    """The space to draw from: ``--space`` (default ``flash``), or with ``--dataset`` the dataset's
    default space (``DEFAULT_SPACES``), its classes set to the dataset's; a ``--space`` whose input
    shape differs from the dataset's is an error."""
    import dataclasses

    from nnflash.models.datasets import DEFAULT_SPACES, dataset_info
    from nnflash.models.space import get_space

    if dataset is None:
        return get_space(space_name or "flash")
    info = dataset_info(dataset)
    space = get_space(space_name or DEFAULT_SPACES[dataset])
    if tuple(space.input_shape) != tuple(info.input_shape):
        shape, want = "x".join(map(str, space.input_shape)), "x".join(map(str, info.input_shape))
        raise SpaceError(f"--space: space {space.name} takes {shape} inputs, dataset {dataset} has {want} images")
    if space.num_classes != info.num_classes:
        space = dataclasses.replace(space, num_classes=info.num_classes)
    return space


def _dataset_option(f: Any) -> Any:
    return click.option(
        "--dataset",
        default=None,
        help="Draw from this dataset's default space (fashion-mnist, mnist: flash-fmnist; cifar10, cifar100: flash).",
    )(f)


@space_group.command("sample")
@click.option("--space", "space_name", default=None, help="Name of the search space. [default: flash]")
@_dataset_option
@click.option("--n", "n", type=int, required=True, callback=_positive, help="Number of specs to draw.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw (and of the wiring).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSON-lines file.")
def space_sample(space_name: str | None, dataset: str | None, n: int, seed: int, out: str) -> None:
    """Draw N configurations uniformly from a space; one spec per line."""
    specs = _dataset_space(space_name, dataset).sample(n, seed=seed)
    k = write_jsonl_atomic(out, (s.to_json_line() for s in specs))
    click.echo(f"wrote {k} specs to {out}", err=True)


@click.command("generate")
@click.option("--target-mass", type=float, default=None, help="Target NN-Mass.")
@click.option("--target-degree", type=float, default=None, help="Target NN-Degree.")
@click.option("--tolerance", type=float, default=0.02, show_default=True, help="Relative tolerance on the target.")
@click.option("--n", "n", type=int, required=True, callback=_positive, help="Number of distinct specs.")
@click.option("--max-params", type=int, default=None, help="Budget on the parameter count.")
@click.option("--max-macs", type=int, default=None, help="Budget on MACs per inference.")
@click.option("--space", "space_name", default=None, help="Search space to draw from. [default: flash]")
@_dataset_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (same seed, same specs).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSON-lines file.")
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON summary per spec on stdout.")
def generate_cmd(
    target_mass: float | None,
    target_degree: float | None,
    tolerance: float,
    n: int,
    max_params: int | None,
    max_macs: int | None,
    space_name: str | None,
    dataset: str | None,
    seed: int,
    out: str,
    as_json: bool,
) -> None:
    """Generate N distinct specs with a target NN-Mass (or NN-Degree), spread across the space.

    \b
    Example:
      nnflash generate --target-mass 400 --n 20 --max-params 2000000 --out cands.jsonl
    """
    from nnflash.models.space import generate

    if (target_mass is None) == (target_degree is None):
        raise SpaceError("give exactly one of --target-mass or --target-degree")
    for name, v in (("--max-params", max_params), ("--max-macs", max_macs)):
        if v is not None and v < 1:
            raise SpaceError(f"{name}: must be a positive integer, got {v}")
    specs = generate(
        _dataset_space(space_name, dataset),
        n,
        target_mass=target_mass,
        target_degree=target_degree,
        tolerance=tolerance,
        max_params=max_params,
        max_macs=max_macs,
        seed=seed,
    )
    k = write_jsonl_atomic(out, (s.to_json_line() for s in specs))
    if as_json:
        for s in specs:
            m = compute_metrics(s)
            emit_json({key: m[key] for key in ("spec_id", "nn_mass", "nn_degree", "params", "macs")})
    click.echo(f"wrote {k} specs to {out}", err=True)


@click.command("ldi")
@click.argument("spec_file", required=False, metavar="[SPEC.json]")
@click.option("--preset", "preset_name", metavar="NAME", help="A built-in architecture instead of a file.")
@click.option("--width-mult", type=float, default=None, help="Width multiplier for --preset.")
@click.option("--batch", type=int, default=8, show_default=True, callback=_positive, help="Inputs in the batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ldi_cmd(
    spec_file: str | None, preset_name: str | None, width_mult: float | None, batch: int, seed: int, as_json: bool
) -> None:
    """Layerwise dynamical isometry at initialization: mean and std of the singular values of
    the layer Jacobians (closer to 1 means better gradient flow)."""
    spec = _load(spec_file, preset_name, width_mult)
    from nnflash.models.builder import build_module
    from nnflash.models.ldi import ldi

    res = ldi(build_module(spec), spec.input_shape, batch=batch, seed=seed)
    out = {
        "spec_id": spec.spec_id,
        "family": spec.family,
        "ldi_mean": res.mean,
        "ldi_std": res.std,
        "layers": len(res.per_layer),
        "singular_values": res.n_singular_values,
    }
    if as_json:
        out["per_layer"] = [{"name": n, "mean": m, "std": s} for n, m, s in res.per_layer]
        emit_json(out)
        return
    t = Table(title=f"LDI of {spec.family} spec {spec.spec_id}", show_header=False)
    t.add_column("k", style="bold")
    t.add_column("v", justify="right")
    for k in ("ldi_mean", "ldi_std", "layers", "singular_values"):
        t.add_row(k, _fmt(out[k]))
    Console().print(t)


def register(cli: click.Group) -> None:
    for cmd in (metrics_cmd, space_group, generate_cmd, ldi_cmd):
        cli.add_command(cmd)
