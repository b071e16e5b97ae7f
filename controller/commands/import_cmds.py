"""`nnflash import latency|accuracy`: tables measured or trained elsewhere, into the database."""

from __future__ import annotations

import json
from typing import Any

import click

from nnflash.controller.store import DEFAULT_DB_NAME
from nnflash_agent.runners import RUNTIMES


def _emit(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


@click.group("import")
def import_group() -> None:
    """Import latencies or accuracies from a CSV table (NAS-Bench-201 architecture strings).

    \b
    Every row is checked first: a table with bad rows (unknown architecture string, missing
    value, the same architecture twice) is refused with their line numbers and nothing is
    stored; a good one is stored in one transaction, recorded as external.
    """


def _common(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")(f)
    f = click.option("--db", "db_path", default=DEFAULT_DB_NAME, show_default=True, type=click.Path(dir_okay=False))(f)
    f = click.option(
        "--arch-column", required=True, help="Column of NAS-Bench-201 architecture strings (the nb201 family)."
    )(f)
    return click.argument("table", metavar="TABLE.csv", type=click.Path(dir_okay=False))(f)


@import_group.command("latency")
@_common
@click.option("--device", required=True, help="Name to store the latencies under (no inventory entry needed).")
@click.option("--runtime", type=click.Choice(RUNTIMES), required=True, help="Runtime the table was measured with.")
@click.option("--latency-column", required=True, help="Column of latencies in milliseconds.")
def latency_cmd(
    table: str, arch_column: str, db_path: str, as_json: bool, device: str, runtime: str, latency_column: str
) -> None:
    """Store externally measured latencies (ms) of the architectures in TABLE.csv.

    \b
    Example (HW-NAS-Bench's Raspberry Pi 4 column):
      nnflash import latency nb201.csv --device raspi4-hwnas --runtime tflite \\
          --arch-column arch --latency-column raspi4_tflite_latency_ms --db nb201.db
      nnflash calibrate --device raspi4-hwnas --runtime tflite --from-db --db nb201.db --out pi4.json
    """
    from nnflash.controller.importing import import_latency

    res = import_latency(
        table, db_path, device=device, runtime=runtime, arch_column=arch_column, latency_column=latency_column
    )
    if as_json:
        _emit({"table": table, "rows": res.rows, "stored": res.stored, "unchanged": res.unchanged, "device": device})
        return
    click.echo(
        f"{res.rows} rows of {table}: {res.stored} latencies stored for {device} ({runtime}, source external)"
        + (f", {res.unchanged} already stored" if res.unchanged else "")
        + f", {res.new_specs} new specs in {db_path}"
    )


@import_group.command("accuracy")
@_common
@click.option("--dataset", required=True, help="Dataset the networks were trained on (e.g. cifar10).")
@click.option("--protocol", required=True, help="A name for the source's training protocol (e.g. nb201-200ep).")
@click.option("--accuracy-column", required=True, help="Column of top-1 accuracies.")
@click.option(
    "--unit",
    type=click.Choice(["auto", "percent", "fraction"]),
    default="auto",
    show_default=True,
    help="Accuracies in percent (0..100) or as fractions (0..1); auto: percent if any value is above 1.",
)
@click.option(
    "--target",
    type=click.Choice(["test", "val"]),
    default="test",
    show_default=True,
    help="Whether the column holds test or validation accuracies.",
)
def accuracy_cmd(
    table: str,
    arch_column: str,
    db_path: str,
    as_json: bool,
    dataset: str,
    protocol: str,
    accuracy_column: str,
    unit: str,
    target: str,
) -> None:
    """Store externally trained accuracies of the architectures in TABLE.csv.

    \b
    Example (NAS-Bench-201's CIFAR-10 test accuracy after 200 epochs):
      nnflash import accuracy nb201.csv --dataset cifar10 --protocol nb201-200ep \\
          --arch-column arch --accuracy-column cifar10_test_accuracy_200ep --db nb201.db
      nnflash accuracy fit --dataset cifar10 --protocol nb201-200ep --target test --kind flash \\
          --db nb201.db --out acc.json
    """
    from nnflash.controller.importing import import_accuracy

    res = import_accuracy(
        table,
        db_path,
        dataset=dataset,
        protocol=protocol,
        arch_column=arch_column,
        accuracy_column=accuracy_column,
        unit=unit,
        target=target,
    )
    if as_json:
        _emit(
            {
                "table": table,
                "rows": res.rows,
                "stored": res.stored,
                "unchanged": res.unchanged,
                "unit": res.unit,
                "protocol": protocol,
                **res.extra,
            }
        )
        return
    click.echo(
        f"{res.rows} rows of {table} read as {res.unit}: {res.stored} {target} accuracies stored for {dataset}, "
        f"protocol {protocol} ({res.extra['protocol_hash']}, source external)"
        + (f", {res.unchanged} already stored" if res.unchanged else "")
        + f", {res.new_specs} new specs in {db_path}"
    )


def register(cli: click.Group) -> None:
    cli.add_command(import_group)
