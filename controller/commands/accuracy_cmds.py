"""`nnflash accuracy fit|predict|select`: accuracy predictors fitted from trainings, and used."""

from __future__ import annotations

import json
from typing import Any, Optional

import click

from nnflash.controller.store import DEFAULT_DB_NAME


def _emit(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


@click.group("accuracy")
def accuracy_group() -> None:
    """Accuracy predictors: which networks to train, fit from trainings, predict."""


@accuracy_group.command("fit")
@click.option("--db", "db_path", default=DEFAULT_DB_NAME, show_default=True, type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="Dataset the trainings were run on (e.g. fashion-mnist).")
@click.option(
    "--protocol",
    default="quick",
    show_default=True,
    help="Training protocol: a preset, a TOML file, or the name accuracies were imported under.",
)
@click.option("--seed", type=int, default=None, help="Use only this training seed. [default: pool every seed]")
@click.option(
    "--kind",
    type=click.Choice(["flash", "nnmass", "multi"]),
    default="multi",
    show_default=True,
    help="flash: NN-Degree curve; nnmass: NN-Mass curve; multi: ridge on metrics and zero-cost proxies.",
)
@click.option(
    "--target",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="Which trained accuracy to fit.",
)
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Dataset files (multi's proxies).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Predictor JSON (plot beside it).")
@click.option("--json", "as_json", is_flag=True, help="Print the cross-validated metrics as one JSON object.")
def fit_cmd(
    db_path: str,
    dataset: str,
    protocol: str,
    seed: Optional[int],
    kind: str,
    target: str,
    data_dir: Optional[str],
    out: str,
    as_json: bool,
) -> None:
    """Fit an accuracy predictor on the ok trainings of DATASET under PROTOCOL (seeds averaged per spec)."""
    from nnflash.calibration.accuracy import format_accuracy_metrics
    from nnflash.controller.accuracy import fit_accuracy, resolve_protocol

    proto = resolve_protocol(protocol, db_path)
    res = fit_accuracy(db_path, dataset, proto, kind, out, seed=seed, data_dir=data_dir, target=target)
    if as_json:
        _emit(
            {
                "kind": kind,
                "path": str(res.path),
                "plot": str(res.plot_path),
                "n_specs": res.n_specs,
                "n_trainings": res.n_trainings,
                "cv": res.cv,
            }
        )
        return
    click.echo(
        f"{kind} accuracy predictor from {res.n_specs} trained specs ({res.n_trainings} trainings, "
        f"seeds {', '.join(map(str, res.seeds))}) on {dataset}, protocol {proto.name} ({proto.protocol_hash}), "
        f"{target} accuracy"
    )
    click.echo(f"cross-validated ({int(res.cv['folds'])} folds): {format_accuracy_metrics(res.cv)}")
    click.echo(f"wrote {res.path} and {res.plot_path}")


@accuracy_group.command("predict")
@click.option(
    "--accuracy",
    "accuracy_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Predictor JSON written by `nnflash accuracy fit`.",
)
@click.argument("specs_file", metavar="SPECS.jsonl")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Dataset files (multi's proxies).")
@click.option("--db", "db_path", default=None, type=click.Path(dir_okay=False), help="Cache proxies in this database.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per spec.")
def predict_cmd(
    accuracy_path: str, specs_file: str, data_dir: Optional[str], db_path: Optional[str], as_json: bool
) -> None:
    """Predict the top-1 accuracy (a fraction in 0..1) of every spec in SPECS.jsonl."""
    from nnflash.calibration.accuracy import load_accuracy_model
    from nnflash.controller.accuracy import predict_accuracy
    from nnflash.models.spec import load_specs_jsonl

    model = load_accuracy_model(accuracy_path)
    specs = load_specs_jsonl(specs_file)
    pred, std = predict_accuracy(model, specs, data_dir=data_dir, db_path=db_path)
    rows = []
    for i, s in enumerate(specs):
        row: dict[str, Any] = {"spec_id": s.spec_id, "accuracy": float(pred[i])}
        if std is not None:
            row["accuracy_std"] = float(std[i])
        rows.append(row)
    if as_json:
        for row in rows:
            _emit(row)
        return
    from rich.console import Console
    from rich.table import Table

    meta = model.metadata_
    t = Table(
        title=f"{len(rows)} prediction(s), {model.kind} predictor for {meta.get('dataset', '?')} / "
        f"protocol {meta.get('protocol', '?')} ({meta.get('protocol_hash', '?')})"
    )
    t.add_column("spec_id")
    t.add_column("accuracy %", justify="right")
    if std is not None:
        t.add_column("+- std %", justify="right")
    for row in rows:
        cells = [row["spec_id"], f"{100 * row['accuracy']:.2f}"]
        if std is not None:
            cells.append(f"{100 * row['accuracy_std']:.2f}")
        t.add_row(*cells)
    Console().print(t)


@accuracy_group.command("select")
@click.option("--budget", type=int, default=25, show_default=True, help="How many networks to train.")
@click.option("--dataset", required=True, help="Dataset (fixes the input shape and the default space).")
@click.option("--space", "space_name", default=None, help="Search space. [default: the dataset's]")
@click.option("--pool", type=int, default=2000, show_default=True, help="Random draws to choose from.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws (and the wiring).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSON-lines file.")
def select_cmd(budget: int, dataset: str, space_name: Optional[str], pool: int, seed: int, out: str) -> None:
    """Choose BUDGET networks to train, spread over NN-Degree and size (not random draws)."""
    from nnflash.controller.accuracy import dataset_space, select_for_dataset
    from nnflash.controller.commands.models_cmds import write_jsonl_atomic

    space = dataset_space(dataset, space_name)
    specs = select_for_dataset(dataset, budget, space_name=space_name, pool=pool, seed=seed)
    n = write_jsonl_atomic(out, (s.to_json_line() for s in specs))
    click.echo(f"wrote {n} specs of space {space.name} for {dataset} to {out} (spread over NN-Degree and size)")


def register(cli: click.Group) -> None:
    cli.add_command(accuracy_group)
