"""`nnflash calibrate` end to end on the built-in `local` device: the real agent, the campaign
runner, the database, passes over the chosen models, resume, --from-db and `nnflash predict`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from nnflash.calibration import load_model  # noqa: E402
from nnflash.controller.cli import cli  # noqa: E402

pytestmark = pytest.mark.integration

QUICK = ["--budget", "8", "--pool", "60", "--passes", "2", "--repeat", "3", "--min-repeat-ms", "5"]


def _calibrate(tmp_path: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(
        cli,
        [
            "calibrate",
            "--device",
            "local",
            "--threads",
            "1",
            *QUICK,
            "--db",
            str(tmp_path / "n.db"),
            "--out",
            str(tmp_path / "cost.json"),
            "--json",
            *extra,
        ],
    )
    return res.exit_code, res.output


def _visits(db: Path) -> dict[str, list[int]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT spec_id, visit FROM measurements WHERE status = 'ok' ORDER BY id").fetchall()
    finally:
        con.close()
    out: dict[str, list[int]] = {}
    for sid, visit in rows:
        out.setdefault(sid, []).append(visit)
    return out


def test_calibrate_measures_in_passes_resumes_and_predicts(tmp_path: Path) -> None:
    code, out = _calibrate(tmp_path)
    assert code == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["measured"] == 8 and report["cv"]["n"] == 8 and report["passes"] == 2
    visits = _visits(tmp_path / "n.db")
    assert len(visits) == 8 and all(sorted(v) == [0, 1] for v in visits.values())

    model = load_model(tmp_path / "cost.json")
    meta = model.metadata_
    assert meta["device"] == "local" and meta["threads"] == 1 and meta["runtime"] == "onnxruntime"
    assert meta["measurement"] == {"passes": 2, "repeat": 3, "min_repeat_ms": 5.0}
    assert sorted(meta["training_spec_ids"]) == sorted(visits)
    # every stored ok visit has a latency (the fit uses the median of a model's ok visits)
    con = sqlite3.connect(tmp_path / "n.db")
    lows = dict(
        con.execute(
            "SELECT spec_id, min(latency_ms_median) FROM measurements WHERE status = 'ok' GROUP BY spec_id"
        ).fetchall()
    )
    con.close()
    assert all(v > 0 for v in lows.values())

    # a rerun resumes: same choice, nothing measured again
    code, out = _calibrate(tmp_path)
    assert code == 0, out
    assert _visits(tmp_path / "n.db") == visits

    # refit from the database, then predict the training models and two new ones
    code, out = _calibrate(tmp_path, "--from-db")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["measured"] == 8
    specs_file = tmp_path / "specs.jsonl"
    con = sqlite3.connect(tmp_path / "n.db")
    specs_file.write_text("".join(row[0] + "\n" for row in con.execute("SELECT json FROM specs ORDER BY spec_id")))
    con.close()
    res = CliRunner().invoke(
        cli, ["predict", "--cost", str(tmp_path / "cost.json"), str(specs_file), "--device", "local", "--json"]
    )
    assert res.exit_code == 0, res.output
    preds = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert {p["spec_id"] for p in preds} >= set(visits)
    for p in preds:
        assert p["latency_ms"] > 0
        if p["spec_id"] in lows:  # a loose bound: eight models, a shared machine
            assert 0.5 < p["latency_ms"] / lows[p["spec_id"]] < 2.0


def test_calibrate_rejects_bad_passes(tmp_path: Path) -> None:
    code, out = _calibrate(tmp_path, "--passes", "0")
    assert code == 2
    assert out.strip().splitlines()[-1].startswith("nnflash: error: --passes")
    assert not (tmp_path / "n.db").exists()


def test_calibrate_with_the_estimate_meter_fits_an_energy_model(tmp_path: Path) -> None:
    code, out = _calibrate(tmp_path, "--passes", "1", "--energy", "estimate")
    assert code == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["energy_cv"] is not None and report["energy_cv"]["n"] == 8
    model = load_model(tmp_path / "cost.json")
    assert model.target == "energy_mj"
    con = sqlite3.connect(tmp_path / "n.db")
    energies = [r[0] for r in con.execute("SELECT energy_mj FROM measurements WHERE status = 'ok'")]
    con.close()
    assert len(energies) == 8 and all(e is not None and e > 0 for e in energies)
    specs_file = tmp_path / "specs.jsonl"
    con = sqlite3.connect(tmp_path / "n.db")
    specs_file.write_text("".join(row[0] + "\n" for row in con.execute("SELECT json FROM specs")))
    con.close()
    res = CliRunner().invoke(cli, ["predict", "--cost", str(tmp_path / "cost.json"), str(specs_file), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert len(rows) == 8 and all(r["energy_mj"] > 0 and r["latency_ms"] > 0 for r in rows)
