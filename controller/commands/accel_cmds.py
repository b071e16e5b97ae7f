"""`nnflash accel estimate`: area, latency and energy of a network on the in-memory-computing
accelerator model (parse, call ``calibration.imc_model``, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from nnflash.calibration.errors import CostModelError
from nnflash.models.errors import SpecError


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise CostModelError(f"--param: expected KEY=VALUE, got {item!r}")
        value: Any
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = text
        out[key] = value
    return out


def _read_accelerator(path: str) -> dict[str, Any]:
    from nnflash.calibration.imc_model import parse_accelerator

    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except FileNotFoundError:
        raise CostModelError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CostModelError(f"{p}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise CostModelError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return dict(parse_accelerator(obj, source=str(p)).params)


@click.group("accel")
def accel_group() -> None:
    """The in-memory-computing (IMC) accelerator model (RRAM crossbars, NeuroSim V1.3's mapping)."""


@accel_group.command("estimate")
@click.argument("spec_file", metavar="[SPEC.json]", required=False)
@click.option("--preset", "preset_name", default=None, help="A preset spec instead of SPEC.json (e.g. vgg8_cifar).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a model parameter (repeatable), e.g. --param adc_bits=4 --param mode=pipeline; "
    "see docs/accelerator.md for every parameter, its unit and default.",
)
@click.option(
    "--accelerator",
    "accel_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="ACCEL.json: parameters (its knob ranges are for the search); --param overrides it.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: totals, tiles per layer, breakdowns.")
def estimate_cmd(
    spec_file: Optional[str],
    preset_name: Optional[str],
    params: tuple[str, ...],
    accel_path: Optional[str],
    as_json: bool,
) -> None:
    """Estimate chip area, latency and dynamic energy per inference of a network (SPEC.json or
    --preset) on the IMC accelerator, with their breakdown and the tiles of every layer.

    Defaults are DNN+NeuroSim V1.3's: RRAM 1T1R at 22 nm, 128x128 subarrays, 2 bits per cell,
    8-bit weights and activations, 5-bit ADC per 8 columns, layer-by-layer."""
    from nnflash.calibration.imc_model import estimate_report
    from nnflash.models.spec import load_spec_file, preset

    if (spec_file is None) == (preset_name is None):
        raise SpecError("give SPEC.json or --preset NAME (one of them)")
    spec = preset(preset_name) if preset_name is not None else load_spec_file(str(spec_file))
    hw = _read_accelerator(accel_path) if accel_path else {}
    hw.update(_parse_params(params))
    report = estimate_report(spec, hw)
    if as_json:
        click.echo(json.dumps(report, separators=(",", ":")))
        return
    _print_report(report)


def _print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    b = r["breakdown"]
    p = r["params"]
    console.print(
        f"spec {r['spec_id']} on an IMC accelerator: {p['tech_nm']:g} nm, {p['subarray_rows']:g}x"
        f"{p['subarray_cols']:g} subarrays, {p['cell_bits']:g} bits/cell, {p['adc_bits']:g}-bit ADC per "
        f"{p['columns_per_adc']:g} columns, {r['mode']} mode"
    )
    console.print(
        f"area {r['area_mm2']:.2f} mm^2   latency {r['latency_ms']:.4f} ms   dynamic energy "
        f"{r['energy_mj'] * 1e3:.3f} uJ (+ leakage {r['leakage_mj'] * 1e3:.3f} uJ)   "
        f"{r['fps']:.0f} images/s   {r['tops_per_w']:.1f} TOPS/W"
    )
    console.print(
        f"{r['total_tiles']} tiles, {r['pes']} PEs, {r['subarrays']} subarrays, {r['adcs']} ADCs, "
        f"utilization {r['utilization']:.2f}"
    )
    t = Table(title="breakdown (other = periphery + buffer + interconnect)")
    t.add_column("component")
    t.add_column("area mm^2", justify="right")
    t.add_column("energy uJ", justify="right")
    t.add_column("latency ms", justify="right")
    for part in ("array", "adc", "accumulation", "other", "periphery", "buffer", "interconnect"):
        a = b["area_mm2"].get(part)
        e = b["energy_mj"].get(part)
        lat = b["latency_ms"].get(part)
        t.add_row(
            part,
            "" if a is None else f"{a:.3f}",
            "" if e is None else f"{e * 1e3:.3f}",
            "" if lat is None else f"{lat:.4f}",
        )
    console.print(t)
    lt = Table(title="layers")
    for col in ("layer", "mapping", "tiles", "crossbars", "speed-up", "utilization", "vectors", "latency ms"):
        lt.add_column(col, justify="left" if col in ("layer", "mapping") else "right")
    for x in r["layers"]:
        lt.add_row(
            x["name"],
            x["mapping"],
            str(x["tiles"]),
            str(x["crossbars"]),
            str(x["speedup"]),
            f"{x['utilization']:.2f}",
            str(x["vectors"]),
            f"{x['latency_ms']:.4f}",
        )
    console.print(lt)


def register(cli: click.Group) -> None:
    cli.add_command(accel_group)
