"""`nnflash search` end to end on cost models fitted here (roofline on synthetic latencies, as in
test_cal_cli.py): JSON lines, the re-check of every limit, co-design choosing between two
deployments, the Pareto front and its plot, export of a chosen design, and every bad input as one
line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from accuracy_fixture import DATASET, fixture_specs_and_accuracy
from click.testing import CliRunner

from nnflash.calibration import EnergyModel, RooflineLatencyModel
from nnflash.calibration.accuracy import make_accuracy_model
from nnflash.calibration.synthetic import synthetic_energy, synthetic_latency
from nnflash.controller.cli import cli
from nnflash.models.space import get_space
from nnflash.models.spec import load_specs_jsonl, spec_of_line

SPACE = "flash-fmnist"  # the smaller space: exact tables build fastest
SPECS = get_space(SPACE).sample(24, seed=7)
FIELDS = {
    "spec",
    "spec_id",
    "deployment",
    "objective",
    "accuracy",
    "latency_ms",
    "energy_mj",
    "params",
    "macs",
    "peak_memory_mb",
    "margins",
}


def _cost(tmp_path: Path, name: str, *, scale: float = 1.0, energy: bool = False, **meta: Any) -> str:
    lat = synthetic_latency(SPECS) * scale
    meta = {"device": "pi", "runtime": "onnxruntime", "threads": 1, "precision": "fp32", "space": SPACE, **meta}
    meta.setdefault("input_shape", list(get_space(SPACE).input_shape))
    if energy:
        m: Any = EnergyModel().fit(SPECS, synthetic_energy(SPECS, lat), latency_ms=lat)
    else:
        m = RooflineLatencyModel().fit(SPECS, lat)
    return str(m.save(tmp_path / name, cv={"p90": 0.04, "rmspe": 3.0}, **meta))


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["search", *args])
    return res.exit_code, res.stdout, res.stderr


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]


def _latency_range(cost: str) -> tuple[float, float]:
    from nnflash.calibration import load_model

    lat = load_model(cost).predict(get_space(SPACE).sample(300, seed=1))
    return float(lat.min()), float(lat.max())


def test_search_writes_design_lines_that_meet_every_limit(tmp_path: Path) -> None:
    cost = _cost(tmp_path, "c.json")
    lo, hi = _latency_range(cost)
    limit = lo + 0.3 * (hi - lo)
    out = tmp_path / "designs.jsonl"
    code, stdout, err = _run(
        "--cost", cost, "--max-latency-ms", f"{limit}", "--max-params", "2e5", "--top", "3",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    rows = _lines(stdout)
    assert 1 <= len(rows) <= 3 and all(FIELDS <= set(r) for r in rows)
    assert "margin 4.0% (the cost models' cross-validated 90th-percentile error)" in err
    for r in rows:
        assert r["latency_ms"] <= limit * (1 - 0.04) + 1e-9 and r["params"] <= 2e5
        assert set(r["margins"]) == {"max_latency_ms", "max_params"} and min(r["margins"].values()) >= 0
        assert r["deployment"] == {
            "name": "onnxruntime/1t/fp32", "device": "pi", "runtime": "onnxruntime", "threads": 1, "precision": "fp32",
        }  # fmt: skip
        assert r["objective"]["name"] == "nn-degree" and r["accuracy"] is None
    values = [r["objective"]["value"] for r in rows]
    assert values == sorted(values, reverse=True)
    # the file holds the same lines, and every command that reads SPECS.jsonl reads it
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == rows
    assert [s.spec_id for s in load_specs_jsonl(out)] == [r["spec_id"] for r in rows]


def test_a_tighter_limit_never_gives_a_better_objective(tmp_path: Path) -> None:
    cost = _cost(tmp_path, "c.json")
    lo, hi = _latency_range(cost)
    best = []
    for frac in (0.2, 0.5):
        code, stdout, err = _run(
            "--cost", cost, "--max-latency-ms", f"{lo + frac * (hi - lo)}", "--margin", "0", "--json"
        )
        assert code == 0, err
        best.append(_lines(stdout)[0]["objective"]["value"])
    assert best[0] <= best[1]


def test_co_design_chooses_the_faster_deployment(tmp_path: Path) -> None:
    slow = _cost(tmp_path, "ort1.json", threads=1)
    fast = _cost(tmp_path, "ort2.json", threads=2, scale=0.5)
    lo, hi = _latency_range(slow)
    code, stdout, err = _run("--cost", slow, "--cost", fast, "--max-latency-ms", f"{lo + 0.2 * (hi - lo)}", "--json")
    assert code == 0, err
    (row,) = _lines(stdout)
    assert row["deployment"]["threads"] == 2
    # alone, the slow deployment's best is worse
    code, stdout, _ = _run("--cost", slow, "--max-latency-ms", f"{lo + 0.2 * (hi - lo)}", "--json")
    assert _lines(stdout)[0]["objective"]["value"] < row["objective"]["value"]


def test_energy_limit_needs_and_uses_an_energy_model(tmp_path: Path) -> None:
    lat_only = _cost(tmp_path, "l.json")
    code, _, err = _run("--cost", lat_only, "--max-energy-mj", "5")
    assert code == 2 and err.count("\n") == 1 and "max_energy_mj" in err
    with_energy = _cost(tmp_path, "e.json", energy=True)
    from nnflash.calibration import load_model

    e = load_model(with_energy).predict(get_space(SPACE).sample(300, seed=1))
    limit = float(e.min() + 0.4 * (e.max() - e.min()))
    code, stdout, err = _run("--cost", with_energy, "--max-energy-mj", f"{limit}", "--json")
    assert code == 0, err
    (row,) = _lines(stdout)
    assert row["energy_mj"] is not None and row["energy_mj"] <= limit and row["margins"]["max_energy_mj"] >= 0.04


def test_pareto_front_and_plot(tmp_path: Path) -> None:
    cost = _cost(tmp_path, "c.json")
    out = tmp_path / "front.jsonl"
    code, stdout, err = _run("--cost", cost, "--pareto", "--out", str(out), "--json")
    assert code == 0, err
    rows = _lines(stdout)
    assert len(rows) >= 3
    lat = [r["latency_ms"] for r in rows]
    obj = [r["objective"]["value"] for r in rows]
    assert lat == sorted(lat) and all(b > a for a, b in zip(obj, obj[1:]))  # a front: costlier only if better
    png = tmp_path / "front.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {png}" in err


def test_export_of_the_chosen_design(tmp_path: Path) -> None:
    cost = _cost(tmp_path, "c.json")
    lo, hi = _latency_range(cost)
    code, stdout, err = _run(
        "--cost", cost, "--max-latency-ms", f"{lo + 0.05 * (hi - lo)}", "--export", str(tmp_path / "found"),
        "--db", str(tmp_path / "none.db"), "--json",
    )  # fmt: skip
    assert code == 0, err
    (row,) = _lines(stdout)
    (art,) = row["artifacts"]
    assert art["format"] == "onnx" and art["weights"] is None and art["max_rel_err"] <= 1e-4
    assert Path(art["path"]) == tmp_path / "found" / f"{row['spec_id']}.onnx" and Path(art["path"]).is_file()
    assert "exported 1 file(s) (0 with trained weights), 0 failed" in err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("nnflash: error: "), err
    for n in needles:
        assert n in err, err


def test_infeasible_limits(tmp_path: Path) -> None:
    cost = _cost(tmp_path, "c.json")
    code, _, err = _run("--cost", cost, "--max-latency-ms", "1e-6")
    _one_line_error(code, err, "max_latency_ms")


def test_cost_models_of_several_devices(tmp_path: Path) -> None:
    a, b = _cost(tmp_path, "a.json"), _cost(tmp_path, "b.json", device="pi4", threads=2)
    _one_line_error(*_run("--cost", a, "--cost", b, "--max-latency-ms", "5")[::2], "several devices", "pi, pi4")


def test_the_same_deployment_twice(tmp_path: Path) -> None:
    a, b = _cost(tmp_path, "a.json"), _cost(tmp_path, "b.json")
    _one_line_error(*_run("--cost", a, "--cost", b)[::2], "both cost models of pi/onnxruntime/1t/fp32")


def test_cost_model_of_another_space_or_input_shape(tmp_path: Path) -> None:
    other = _cost(tmp_path, "o.json", space="flash", input_shape=[3, 32, 32])
    _one_line_error(*_run("--cost", other, "--space", SPACE)[::2], "3x32x32", "1x28x28")
    named = _cost(tmp_path, "s.json", space="my-fmnist-space")  # same input shape, another space
    _one_line_error(*_run("--cost", named, "--space", SPACE)[::2], "my-fmnist-space", SPACE)


def test_accuracy_predictor_of_another_dataset(tmp_path: Path) -> None:
    specs, acc = fixture_specs_and_accuracy()
    pred = make_accuracy_model("flash").fit(specs, acc)  # accuracies measured on the 1x8x8 tiny task
    path = pred.save(tmp_path / "acc.json", dataset=DATASET)
    cost = _cost(tmp_path, "c.json")
    _one_line_error(*_run("--cost", cost, "--space", SPACE, "--accuracy", str(path))[::2], "1x8x8", "1x28x28")


@pytest.mark.parametrize(
    "content, needle",
    [("{", "not valid JSON"), ('{"format": "other"}', "not an nnflash cost model"), (None, "no such file")],
)
def test_corrupt_cost_files(tmp_path: Path, content: Any, needle: str) -> None:
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_text(content)
    _one_line_error(*_run("--cost", str(p))[::2], needle)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--margin", "1.5"], "--margin"),
        (["--max-latency-ms", "-1"], "max_latency_ms"),
        (["--top", "0"], "--top"),
        (["--plot", "x.png"], "--plot applies with --pareto"),
        (["--objective", "nn-mass", "--accuracy", "a.json"], "either --accuracy"),
        (["--max-area-mm2", "3"], "area"),
        (["--out", "no/such/dir/d.jsonl"], "--out: directory"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], needle: str) -> None:
    cost = _cost(tmp_path, "c.json")
    _one_line_error(*_run("--cost", cost, *args)[::2], needle)


@pytest.mark.parametrize("method", ["shgo", "random"])
def test_other_methods_return_designs_within_the_limits(tmp_path: Path, method: str) -> None:
    cost = _cost(tmp_path, "c.json")
    lo, hi = _latency_range(cost)
    limit = lo + 0.4 * (hi - lo)
    code, stdout, err = _run("--cost", cost, "--max-latency-ms", f"{limit}", "--method", method, "--top", "2", "--json")
    assert code == 0, err
    rows = _lines(stdout)
    assert rows and all(r["latency_ms"] <= limit * 0.96 + 1e-9 for r in rows)
    assert f"{method}: {len(rows)} design(s)" in err


def test_nn_mass_objective(tmp_path: Path) -> None:
    cost = _cost(tmp_path, "c.json")
    lo, hi = _latency_range(cost)
    code, stdout, err = _run(
        "--cost", cost, "--max-latency-ms", f"{lo + 0.3 * (hi - lo)}", "--objective", "nn-mass", "--json"
    )
    assert code == 0, err
    (row,) = _lines(stdout)
    from nnflash.models.metrics import compute_metrics
    from nnflash.models.spec import parse_spec

    assert row["objective"]["name"] == "nn-mass"
    assert row["objective"]["value"] == pytest.approx(compute_metrics(parse_spec(row["spec"]))["nn_mass"], rel=1e-9)


def test_export_carries_the_weights_nnflash_train_stored(tmp_path: Path) -> None:
    """The chosen design is trained (briefly, on generated 28x28 images, through the engine behind
    `nnflash train`); a second search exports it with those weights."""
    import numpy as np
    import torch

    from nnflash.controller.training import run_trainings
    from nnflash.models.datasets import Dataset
    from nnflash.models.training_protocol import TrainingProtocol

    cost = _cost(tmp_path, "c.json")
    lo, hi = _latency_range(cost)
    args = ["--cost", cost, "--max-latency-ms", f"{lo + 0.02 * (hi - lo)}", "--json"]
    code, stdout, err = _run(*args)
    assert code == 0, err
    (row,) = _lines(stdout)
    spec = spec_of_line(row)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    x = (rng.integers(0, 60, (200, 1, 28, 28)) + (y[:, None, None, None] * 19)).astype(np.uint8)
    data = Dataset.from_arrays("gen28", x[:160], y[:160], x[160:], y[160:], num_classes=10, val_size=32)
    proto = TrainingProtocol(name="tiny", train_size=128, epochs=1, batch_size=32, lr=0.05, schedule="linear")
    db = tmp_path / "r.db"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_trainings([spec], data, proto, 0, db, torch_device="cpu").ok == 1
    finally:
        torch.set_num_threads(before)
    code, stdout, err = _run(*args, "--export", str(tmp_path / "found"), "--db", str(db))
    assert code == 0, err
    (art,) = _lines(stdout)[0]["artifacts"]
    assert art["weights"]["dataset"] == "gen28" and "1 with trained weights" in err
    side = json.loads(Path(art["path"] + ".json").read_text())
    assert side["weights_sha256"] is not None and side["max_rel_err"] <= 1e-4
