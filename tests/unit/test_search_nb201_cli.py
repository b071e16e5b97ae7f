"""`nnflash search --space nb201` end to end on real NAS-Bench-201 rows (the fixture: every 250th row of
``../shared/data/nb201``, 63 networks): imported with `nnflash import`, a cost model from
`nnflash calibrate --from-db`, a flash predictor from `nnflash accuracy fit`, then the search over all
15,625 networks; bad input as one line with exit code 2; the front's plot on nb201."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from nnflash.calibration import load_model
from nnflash.calibration.accuracy import load_accuracy_model
from nnflash.controller.cli import cli
from nnflash.models.space import get_space
from nnflash.models.spec import parse_spec

FIXTURE = Path(__file__).parent / "fixtures" / "nb201" / "nb201_every250.csv"


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("nb201cli")
    db = str(tmp / "nb.db")
    code, _, err = _run("import", "latency", str(FIXTURE), "--device", "raspi4-hwnas", "--runtime", "tflite",
                        "--arch-column", "arch", "--latency-column", "raspi4_tflite_latency_ms",
                        "--db", db)  # fmt: skip
    assert code == 0, err
    code, _, err = _run("import", "accuracy", str(FIXTURE), "--dataset", "cifar10", "--protocol", "nb201-200ep",
                        "--arch-column", "arch", "--accuracy-column", "cifar10_test_accuracy_200ep",
                        "--db", db)  # fmt: skip
    assert code == 0, err
    cost, acc = str(tmp / "pi4.json"), str(tmp / "acc.json")
    code, _, err = _run("calibrate", "--device", "raspi4-hwnas", "--runtime", "tflite", "--from-db", "--db", db,
                        "--out", cost)  # fmt: skip
    assert code == 0, err
    code, _, err = _run("accuracy", "fit", "--dataset", "cifar10", "--protocol", "nb201-200ep", "--target", "test",
                        "--kind", "flash", "--db", db, "--out", acc)  # fmt: skip
    assert code == 0, err
    return {"cost": cost, "acc": acc}


@pytest.mark.slow
def test_search_nb201_recommends_the_best_predicted_network_within_the_limit(models: dict[str, str]) -> None:
    limit = 20.0
    code, stdout, err = _run("search", "--space", "nb201", "--cost", models["cost"], "--accuracy", models["acc"],
                             "--max-latency-ms", str(limit), "--margin", "0", "--top", "3", "--json")  # fmt: skip
    assert code == 0, err
    assert "exact: 3 design(s) on space nb201" in err and "15625 full evaluations" in err
    rows = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    cost, acc = load_model(models["cost"]), load_accuracy_model(models["acc"])
    specs = [parse_spec(r["spec"]) for r in rows]
    assert len(rows) == 3 and all(s.family == "nb201" for s in specs)
    own_lat, own_acc = cost.predict(specs), acc.predict(specs)
    for r, lat, a in zip(rows, own_lat, own_acc):
        assert r["latency_ms"] == pytest.approx(lat, rel=1e-12) and lat <= limit
        assert r["accuracy"] == pytest.approx(a, rel=1e-12) == r["objective"]["value"]
        assert r["objective"]["name"] == "accuracy:flash" and r["peak_memory_mb"] is None
        assert r["margins"]["max_latency_ms"] >= 0
    assert [r["accuracy"] for r in rows] == sorted((r["accuracy"] for r in rows), reverse=True)
    # no network of a 2,000 sample, predicted here, beats the first within the limit
    sample = get_space("nb201").sample(2000, seed=4)
    lat, a = cost.predict(sample), np.asarray(acc.predict(sample))
    ok = lat <= limit
    assert ok.any() and a[ok].max() <= rows[0]["accuracy"] + 1e-12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "shgo"], "does not apply to space nb201"),
        (["--method", "random"], "use --method exact"),
        (["--max-peak-memory-mb", "1"], "no peak-memory model of nb201"),
        (["--space", "flash"], "calibrated on space 'nb201', not 'flash'"),
        (["--max-latency-ms", "-1"], "max_latency_ms: must be a positive finite number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models: dict[str, str], args: list[str], message: str) -> None:
    base = ["search", "--cost", models["cost"], "--max-latency-ms", "10"]
    code, stdout, err = _run(*base, *args)
    assert code == 2 and message in err and err.count("\n") == 1 and stdout == ""


def test_the_front_of_nb201_is_plotted(models: dict[str, str], tmp_path: Path) -> None:
    from nnflash.controller.codesign import SearchOutcome, plot_front
    from nnflash.search import Deployment, Objective, build_tables, pareto_front

    space = get_space("nb201")
    dep = Deployment.from_model(load_model(models["cost"]))
    obj = Objective.from_predictor(load_accuracy_model(models["acc"]))
    front = pareto_front(space, [dep], obj, tables=build_tables(space, [dep], obj, specs=space.sample(300, seed=2)))
    outcome: Any = SearchOutcome(front, space, [dep], obj, "exact", 0.0, "")
    png = plot_front(outcome, tmp_path / "front.png", samples=100)
    assert png.stat().st_size > 1000 and len(front) >= 2
