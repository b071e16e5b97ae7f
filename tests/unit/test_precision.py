"""Deployment precision (fp32, TFLite int8): part of a measurement's key and of a cost model's, in the
database (migration 4, old databases keep their meaning), the campaign (int8 exports quantized), and
`nnflash profile` / `nnflash calibrate` / `nnflash predict`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nnflash.calibration import RooflineLatencyModel, load_model
from nnflash.calibration.synthetic import synthetic_latency
from nnflash.controller import profiling
from nnflash.controller.campaign import MeasureSettings
from nnflash.controller.cli import cli
from nnflash.controller.commands import calibration_cmds
from nnflash.controller.inventory import Device
from nnflash.controller.store import MIGRATIONS, SCHEMA_VERSION, ResultsDB
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(12, seed=11)


def _ok(store: ResultsDB, spec_id: str, rid: str, **kw: Any) -> bool:
    return store.add_measurement(
        spec_id=spec_id,
        device="pi",
        runtime="tflite",
        threads=4,
        request_id=rid,
        status="ok",
        latency_ms_median=2.0,
        **kw,
    )


def test_a_schema_3_database_opens_and_its_rows_become_fp32(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with ResultsDB(db, migrations=MIGRATIONS[:3]) as old:
        assert old.schema_version == 3
        old.add_spec("s1", "dense", {"family": "dense"})
        old._execute(  # the columns schema 3 had (today's add_measurement writes precision too)
            "INSERT INTO measurements(spec_id, device, runtime, threads, request_id, status, latency_ms_median,"
            " created_at, visit) VALUES ('s1', 'pi', 'tflite', 4, 'r1', 'ok', 3.0, 'x', 0)"
        )
        old._execute(
            "INSERT INTO cost_models(device, runtime, threads, json, created_at) VALUES ('pi', 'tflite', 4, '{}', 'x')"
        )
    with ResultsDB(db) as st:
        assert st.schema_version == SCHEMA_VERSION >= 4
        (row,) = st.measurements(device="pi")
        assert row["precision"] == "fp32" and row["latency_ms_median"] == 3.0
        assert st.done_spec_ids("pi", "tflite", 4) == {"s1"}
        assert st.done_spec_ids("pi", "tflite", 4, precision="int8") == set()
        assert st.latest_cost_model("pi", "tflite", 4) is not None
        assert st.latest_cost_model("pi", "tflite", 4, precision="int8") is None
        # an int8 measurement of the same model is another key; a second fp32 ok is a duplicate
        assert _ok(st, "s1", "r2", precision="int8")
        assert not _ok(st, "s1", "r3")
        assert st.is_done("s1", "pi", "tflite", 4, precision="int8")
        assert [r["precision"] for r in st.measurements(device="pi", precision="int8")] == ["int8"]


def test_failures_count_per_precision(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        for i in range(2):
            st.add_measurement(
                spec_id="s", device="pi", runtime="tflite", threads=1, request_id=f"f{i}", status="timeout",
                precision="int8",
            )  # fmt: skip
        assert st.failure_counts("pi", "tflite", 1, precision="int8") == {"s": 2}
        assert st.failure_counts("pi", "tflite", 1) == {}
        assert st.failure_count("s", "pi", "tflite", 1, precision="int8") == 2


def test_settings_refuse_int8_outside_tflite() -> None:
    assert MeasureSettings(runtime="tflite", precision="int8").quantize == "int8"
    assert MeasureSettings(runtime="tflite").quantize is None
    with pytest.raises(ValueError, match="tflite"):
        MeasureSettings(runtime="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        MeasureSettings(runtime="tflite", precision="fp16")


@dataclasses.dataclass(frozen=True)
class _Art:
    spec_id: str
    path: Path
    sha256: str
    format: str = "tflite"
    size: int = 1
    exporter: str = "fake"
    versions: tuple[tuple[str, str], ...] = ()


class _Conn:
    facts: dict[str, Any] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def put_artifact(self, *a: Any, **kw: Any) -> None:
        pass

    def request(self, verb: str, args: dict, **kw: Any) -> dict[str, Any]:
        return {"status": "ok", "result": {"latency_ms_median": 1.0, "samples_ms": [1.0]}}

    def results(self, ids: list[str]) -> dict[str, Any]:
        return {}


def test_an_int8_campaign_exports_quantized_and_stores_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnflash.models.export

    asked: list[Any] = []

    def fake_export(spec: Any, fmt: str, out_dir: Any, **kw: Any) -> _Art:
        asked.append((fmt, kw.get("quantize")))
        path = Path(out_dir) / f"{spec.spec_id}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return _Art(spec.spec_id, path, f"{spec.spec_id:0<64}"[:64])

    monkeypatch.setattr(nnflash.models.export, "export_spec", fake_export)
    db = tmp_path / "n.db"
    settings = MeasureSettings(runtime="tflite", threads=1, repeat=1, precision="int8")
    dev = Device(name="fake", host="fake.invalid")
    res = profiling.run_campaign(SPECS[:2], [dev], settings, db, tmp_path / "art", connect=lambda d: _Conn())
    assert res.devices["fake"].ok == 2 and all(r["precision"] == "int8" for r in res.rows)
    assert asked == [("tflite", "int8"), ("tflite", "int8")]
    assert len(profiling.stored_rows(db, ["fake"], "tflite", 1, precision="int8")) == 2
    assert profiling.stored_rows(db, ["fake"], "tflite", 1) == []
    # the fp32 campaign of the same models is not skipped: it is another key
    fp32 = dataclasses.replace(settings, precision="fp32")
    again = profiling.run_campaign(SPECS[:2], [dev], fp32, db, tmp_path / "art", connect=lambda d: _Conn())
    assert again.devices["fake"].ok == 2 and asked[-1] == ("tflite", None)


@pytest.mark.parametrize("cmd", ["profile", "calibrate"])
def test_int8_needs_tflite_one_line_exit_2(tmp_path: Path, cmd: str) -> None:
    specs = tmp_path / "s.jsonl"
    specs.write_text(SPECS[0].to_json_line() + "\n")
    args = [cmd, str(specs)] if cmd == "profile" else [cmd, "--device", "local", "--out", str(tmp_path / "c.json")]
    res = CliRunner().invoke(cli, [*args, "--precision", "int8", "--db", str(tmp_path / "n.db")])
    assert res.exit_code == 2
    assert "--precision int8: needs --runtime tflite" in res.output
    assert not (tmp_path / "n.db").exists()


def test_calibrate_int8_reaches_the_profiler_and_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_profile(specs: list, **kw: Any) -> list[dict]:
        seen.append(kw["precision"])
        lat = synthetic_latency(specs, noise=0.01, seed=len(seen))
        return [{"spec_id": s.spec_id, "latency_ms_median": float(v), "status": "ok"} for s, v in zip(specs, lat)]

    monkeypatch.setattr(calibration_cmds, "_profile", fake_profile)
    out = tmp_path / "c.json"
    db = tmp_path / "n.db"
    args = ["calibrate", "--device", "local", "--runtime", "tflite", "--precision", "int8", "--budget", "8"]
    res = CliRunner().invoke(cli, [*args, "--pool", "100", "--db", str(db), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {"int8"}
    assert json.loads(res.output.splitlines()[-1])["precision"] == "int8"
    assert load_model(out).metadata_["precision"] == "int8"
    with ResultsDB(db, readonly=True) as st:
        assert st.latest_cost_model("local", "tflite", None, precision="int8") is not None
        assert st.latest_cost_model("local", "tflite", None) is None


def test_calibrate_from_db_takes_only_the_precision_asked_for(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    lat = synthetic_latency(SPECS, noise=0.01)
    with ResultsDB(db) as st:
        for i, (s, v) in enumerate(zip(SPECS, lat)):
            st.add_spec(s.spec_id, s.family, s.canonical_json())
            _ok(st, s.spec_id, f"q{i}", precision="int8")  # 2.0 ms each: would ruin an fp32 fit
            st.add_measurement(
                spec_id=s.spec_id, device="pi", runtime="tflite", threads=4, request_id=f"f{i}", status="ok",
                latency_ms_median=float(v),
            )  # fmt: skip
    out = tmp_path / "c.json"
    base = ["calibrate", "--device", "pi", "--runtime", "tflite", "--threads", "4", "--from-db", "--db", str(db)]
    res = CliRunner().invoke(cli, [*base, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["precision"] == "fp32" and rep["measured"] == len(SPECS) and rep["cv"]["within_10"] >= 0.9
    res = CliRunner().invoke(cli, [*base, "--precision", "int8", "--out", str(tmp_path / "q.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "q.json").metadata_["precision"] == "int8"


def test_predict_warns_about_another_precision(tmp_path: Path) -> None:
    m = RooflineLatencyModel().fit(SPECS, synthetic_latency(SPECS))
    cost = m.save(tmp_path / "c.json", device="pi", runtime="tflite", threads=4)  # no precision: fp32
    specs = tmp_path / "s.jsonl"
    specs.write_text(SPECS[0].to_json_line() + "\n")
    res = CliRunner().invoke(cli, ["predict", "--cost", str(cost), str(specs), "--precision", "int8"])
    assert res.exit_code == 0, res.output
    assert "calibrated for precision 'fp32', not 'int8'" in res.output
    res = CliRunner().invoke(cli, ["predict", "--cost", str(cost), str(specs), "--precision", "fp32"])
    assert "warning" not in res.output
