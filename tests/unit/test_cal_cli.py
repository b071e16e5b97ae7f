"""`nnflash predict` and `nnflash calibrate` (with a fake campaign runner and a real database)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from nnflash.calibration import RooflineLatencyModel, load_model
from nnflash.calibration.synthetic import synthetic_energy, synthetic_latency
from nnflash.controller.cli import cli
from nnflash.controller.commands import calibration_cmds
from nnflash.models.space import get_space

if "predict" not in cli.commands:
    calibration_cmds.register(cli)

SPECS = get_space("flash").sample(20, seed=5)


def _specs_file(tmp_path, specs=SPECS) -> str:
    p = tmp_path / "specs.jsonl"
    p.write_text("".join(s.to_json_line() + "\n" for s in specs))
    return str(p)


def _cost_file(tmp_path) -> str:
    m = RooflineLatencyModel().fit(SPECS, synthetic_latency(SPECS))
    return str(m.save(tmp_path / "cost.json", device="pi3", runtime="onnxruntime", threads=1))


def test_predict_json(tmp_path) -> None:
    res = CliRunner().invoke(cli, ["predict", "--cost", _cost_file(tmp_path), _specs_file(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["spec_id"] for r in rows] == [s.spec_id for s in SPECS]
    assert all(r["latency_ms"] > 0 and "energy_mj" not in r for r in rows)


def test_predict_table_and_warning(tmp_path) -> None:
    res = CliRunner().invoke(cli, ["predict", "--cost", _cost_file(tmp_path), _specs_file(tmp_path), "--device", "pi4"])
    assert res.exit_code == 0, res.output
    assert "warning: cost model was calibrated for device 'pi3'" in res.output
    assert SPECS[0].spec_id in res.output


def test_predict_energy(tmp_path) -> None:
    from nnflash.calibration import EnergyModel

    lat = synthetic_latency(SPECS)
    m = EnergyModel().fit(SPECS, synthetic_energy(SPECS, lat), latency_ms=lat)
    cost = m.save(tmp_path / "e.json")
    res = CliRunner().invoke(cli, ["predict", "--cost", str(cost), _specs_file(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert all(json.loads(line)["energy_mj"] > 0 for line in res.output.splitlines())


def test_predict_corrupt_cost_file_is_one_line_exit_2(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    res = CliRunner().invoke(cli, ["predict", "--cost", str(bad), _specs_file(tmp_path)])
    assert res.exit_code == 2
    assert "nnflash: error: cost model" in res.output and "not valid JSON" in res.output


def _fake_profile(energy: bool = False) -> Any:
    calls: list[int] = []

    def profile(specs: list, **kw: Any) -> list[dict]:
        calls.append(len(specs))
        lat = synthetic_latency(specs, noise=0.01, seed=len(calls))
        en = synthetic_energy(specs, lat) if energy else [None] * len(specs)
        rows = [
            {"spec_id": s.spec_id, "latency_ms_median": float(v), "energy_mj": e, "status": "ok"}
            for s, v, e in zip(specs, lat, en)
        ]
        rows[0] = {**rows[0], "status": "timeout", "latency_ms_median": None}  # one failure
        return rows

    profile.calls = calls  # type: ignore[attr-defined]
    return profile


def test_calibrate_profiles_fits_and_reports(tmp_path, monkeypatch) -> None:
    fake = _fake_profile()
    monkeypatch.setattr(calibration_cmds, "_profile", fake)
    out = tmp_path / "cost.json"
    res = CliRunner().invoke(
        cli,
        [
            "calibrate",
            "--device",
            "local",
            "--threads",
            "1",
            "--budget",
            "12",
            "--pool",
            "300",
            "--db",
            str(tmp_path / "n.db"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert sum(fake.calls) == 12 and len(fake.calls) == 3
    assert "RMSPE" in res.output and "Spearman" in res.output
    assert "in 5 passes, the median of the undisturbed ones" in res.output
    model = load_model(out)
    assert model.metadata_["device"] == "local" and model.metadata_["threads"] == 1
    assert model.metadata_["cv"]["n"] == 9  # 12 profiled, one failure per round
    assert (tmp_path / "cost.png").exists()


def test_calibrate_energy_json(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(calibration_cmds, "_profile", _fake_profile(energy=True))
    out = tmp_path / "cost.json"
    res = CliRunner().invoke(
        cli,
        [
            "calibrate",
            "--device",
            "local",
            "--budget",
            "10",
            "--pool",
            "200",
            "--db",
            str(tmp_path / "n.db"),
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.splitlines()[-1])
    assert rep["energy_cv"] is not None and rep["measured"] == 7
    assert load_model(out).target == "energy_mj"


def test_calibrate_from_db(tmp_path) -> None:
    from nnflash.controller.store import ResultsDB

    db = tmp_path / "n.db"
    store = ResultsDB(db)
    lat = synthetic_latency(SPECS, noise=0.01)
    for i, (s, v) in enumerate(zip(SPECS, lat)):
        store.add_spec(s.spec_id, s.family, s.canonical_json())
        store.add_measurement(
            spec_id=s.spec_id,
            device="pi3",
            runtime="onnxruntime",
            threads=1,
            request_id=f"r{i}",
            status="ok",
            latency_ms_median=float(v),
        )
    store.add_measurement(
        spec_id=SPECS[0].spec_id,
        device="pi3",
        runtime="onnxruntime",
        threads=4,
        request_id="other",
        status="ok",
        latency_ms_median=1.0,
    )
    store.close()
    out = tmp_path / "cost.json"
    res = CliRunner().invoke(
        cli,
        ["calibrate", "--device", "pi3", "--threads", "1", "--from-db", "--db", str(db), "--out", str(out), "--json"],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["measured"] == len(SPECS) and rep["cv"]["within_10"] >= 0.9
    assert load_model(out).metadata_["training_spec_ids"] == [s.spec_id for s in SPECS]
    store = ResultsDB(db, readonly=True)
    assert store.latest_cost_model("pi3", "onnxruntime", 1) is not None
    store.close()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--from-db", "--db", "missing.db"], "does not exist"),
        (["--budget", "0"], "--budget"),
        (["--model", "energy"], "--model"),
    ],
)
def test_calibrate_errors(tmp_path, monkeypatch, args, msg) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["calibrate", "--device", "pi3", "--out", "c.json", *args])
    assert res.exit_code == 2 and msg in res.output


def test_calibrate_too_few(tmp_path) -> None:
    from nnflash.controller.store import ResultsDB

    db = tmp_path / "n.db"
    store = ResultsDB(db)
    for i, s in enumerate(SPECS[:3]):
        store.add_spec(s.spec_id, s.family, s.canonical_json())
        store.add_measurement(
            spec_id=s.spec_id,
            device="pi3",
            runtime="onnxruntime",
            threads=None,
            request_id=f"r{i}",
            status="ok",
            latency_ms_median=1.0 + i,
        )
    store.close()
    res = CliRunner().invoke(
        cli, ["calibrate", "--device", "pi3", "--from-db", "--db", str(db), "--out", str(tmp_path / "c.json")]
    )
    assert res.exit_code == 2 and "too few measurements" in res.output


def test_usable_rows_takes_the_median_of_the_undisturbed_visits() -> None:
    from nnflash.calibration.workflow import usable_rows

    a, b, c = SPECS[:3]
    rows = [
        {"spec_id": a.spec_id, "status": "ok", "latency_ms_median": 2.0, "energy_mj": 3.0},
        {"spec_id": b.spec_id, "status": "timeout", "latency_ms_median": None},
        {"spec_id": a.spec_id, "status": "ok", "latency_ms_median": 1.5, "energy_mj": None},
        {"spec_id": c.spec_id, "status": "ok", "latency_ms_median": 4.0, "energy_mj": 8.0},
        {"spec_id": a.spec_id, "status": "ok", "latency_ms_median": 1.8, "energy_mj": 5.0},
        {"spec_id": a.spec_id, "status": "disturbed", "latency_ms_median": 9.0, "energy_mj": 50.0},
        {"spec_id": b.spec_id, "status": "disturbed", "latency_ms": 7.0},
        {"spec_id": "unknown", "status": "ok", "latency_ms_median": 1.0},
    ]
    specs, lat, energy, skipped = usable_rows({s.spec_id: s for s in (a, b, c)}, rows)
    assert [s.spec_id for s in specs] == [a.spec_id, c.spec_id]
    assert list(lat) == [1.8, 4.0]  # the median of a's three ok visits; the disturbed one left out
    assert energy is not None and list(energy) == [4.0, 8.0]  # median of the visits that have one
    assert skipped == sorted([b.spec_id, "unknown"])  # b: only a failure and a disturbed visit
    _, _, energy, _ = usable_rows({a.spec_id: a}, rows[2:3])
    assert energy is None  # a model with no energy at all: no energy model
    # a visit's latency is its latency_ms (the undisturbed repeats' median) where the row has one
    rows2 = [{"spec_id": c.spec_id, "status": "ok", "latency_ms_median": 4.0, "summary": {"latency_ms": 3.5}}]
    assert list(usable_rows({c.spec_id: c}, rows2)[1]) == [3.5]


def test_calibrate_passes_and_counting_reach_the_profiler(tmp_path, monkeypatch) -> None:
    fake = _fake_profile()
    seen: list[dict] = []

    def profile(specs: list, **kw: Any) -> list[dict]:
        seen.append(kw)
        return fake(specs, **kw)

    monkeypatch.setattr(calibration_cmds, "_profile", profile)
    out = tmp_path / "cost.json"
    args = ["calibrate", "--device", "local", "--budget", "10", "--pool", "200"]
    args += ["--db", str(tmp_path / "n.db"), "--out", str(out)]
    res = CliRunner().invoke(cli, args + ["--repeat", "7", "--affinity", "0", "--disturbed-share", "0.5"])
    assert res.exit_code == 0, res.output
    assert {(k["passes"], k["repeat"], k["min_repeat_ms"]) for k in seen} == {(5, 7, 25.0)}
    assert {(k["affinity"], k["disturbed_share"]) for k in seen} == {((0,), 0.5)}
    assert load_model(out).metadata_["measurement"] == {"passes": 5, "repeat": 7, "min_repeat_ms": 25.0}
    bads = [(["--passes", "0"], "--passes"), (["--repeat", "-1"], "--repeat"), (["--affinity", "x"], "--affinity")]
    for bad, msg in bads + [(["--disturbed-share", "2"], "--disturbed-share")]:
        res = CliRunner().invoke(cli, args + bad)
        assert res.exit_code == 2 and f"nnflash: error: {msg}" in res.output


def test_calibrate_stops_when_a_pass_is_interrupted(tmp_path, monkeypatch) -> None:
    from nnflash.controller import profiling
    from nnflash.controller.campaign import CampaignResult

    visits: list[int] = []

    def interrupted(specs: list, *a: Any, visit: int = 0, **kw: Any) -> CampaignResult:
        visits.append(visit)
        return CampaignResult(campaign_id=1, interrupted=True)

    monkeypatch.setattr(profiling, "run_campaign", interrupted)
    args = ["calibrate", "--device", "local", "--budget", "10", "--pool", "200"]
    res = CliRunner().invoke(cli, args + ["--db", str(tmp_path / "n.db"), "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 2
    assert "interrupted in pass 1 of 5" in res.output and "again to resume" in res.output
    assert visits == [0]  # no further pass, no fit
    assert not (tmp_path / "c.json").exists()
