"""Results database: schema/migrations, WAL, uniqueness, queries, exports, concurrency."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Dict

import pytest

from nnflash.controller.errors import NnflashError, StoreError
from nnflash.controller.store import (
    APPLICATION_ID,
    EXPORT_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    ResultsDB,
    measurement_fields,
    write_csv,
    write_jsonl,
)

TABLES = {"specs", "artifacts", "devices", "campaigns", "measurements", "cost_models"}


def _m(request_id: str, **kw: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = dict(
        spec_id="s1",
        device="pi",
        runtime="onnxruntime",
        threads=None,
        request_id=request_id,
        status="ok",
        latency_ms_median=1.0,
        latency_ms_mean=1.1,
        latency_ms_p90=1.5,
    )
    base.update(kw)
    return base


def test_fresh_db_has_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nnflash.db"
    with ResultsDB(path) as st:
        assert st.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        assert st.journal_mode == "wal"
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    cols = {r[1] for r in db.execute("PRAGMA table_info(measurements)")}
    for col in (
        "campaign_id spec_id device runtime threads request_id status error latency_ms_median "
        "latency_ms_mean latency_ms_p90 energy_mj samples_json summary_json state_json energy_json "
        "created_at"
    ).split():
        assert col in cols
    db.close()


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with ResultsDB(path) as st:
        st.add_measurement(**_m("r1"))
    with ResultsDB(path) as st:
        assert st.count_measurements() == 1
        assert st.schema_version == SCHEMA_VERSION


def test_migration_runs_only_new_steps(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with ResultsDB(path) as st:
        st.add_measurement(**_m("r1"))
    calls = []

    def v2(db: sqlite3.Connection) -> None:
        calls.append("v2")
        db.execute("ALTER TABLE measurements ADD COLUMN note TEXT")

    with ResultsDB(path, migrations=MIGRATIONS + [v2]) as st:
        assert st.schema_version == SCHEMA_VERSION + 1
        assert st.count_measurements() == 1
    with ResultsDB(path, migrations=MIGRATIONS + [v2]) as st:
        assert st.schema_version == SCHEMA_VERSION + 1
    assert calls == ["v2"]


def test_v1_database_gains_visits_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with ResultsDB(path, migrations=MIGRATIONS[:1]) as st:  # a database written before visits existed
        assert st.schema_version == 1
    db = sqlite3.connect(path)
    for rid, status in (("r1", "ok"), ("r2", "timeout")):
        db.execute(
            "INSERT INTO measurements(spec_id, device, runtime, threads, request_id, status, created_at)"
            " VALUES ('s1', 'pi', 'onnxruntime', NULL, ?, ?, '2026-01-01')",
            (rid, status),
        )
    db.commit()
    db.close()
    with ResultsDB(path) as st:
        assert st.schema_version == SCHEMA_VERSION
        rows = st.measurements(full=True)
        assert [(r["request_id"], r["visit"]) for r in rows] == [("r1", 0), ("r2", 0)]
        assert st.is_done("s1", "pi", "onnxruntime", None)
        assert not st.add_measurement(**_m("r3"))  # visit 0 already has its ok row
        assert st.add_measurement(**_m("r4"), visit=1)  # a second visit is a new row
        assert st.done_spec_ids("pi", "onnxruntime", None, visit=1) == {"s1"}


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with ResultsDB(path) as st:
        st.add_measurement(**_m("r1"))

    def bad(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE measurements ADD COLUMN note TEXT")
        db.execute("THIS IS NOT SQL")

    with pytest.raises(StoreError, match="cannot migrate"):
        ResultsDB(path, migrations=MIGRATIONS + [bad])
    with ResultsDB(path) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert st.count_measurements() == 1
        cols = {r[1] for r in st._db.execute("PRAGMA table_info(measurements)")}
        assert "note" not in cols


def test_newer_schema_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    ResultsDB(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer than this nnflash supports") as exc:
        ResultsDB(path)
    assert str(SCHEMA_VERSION + 5) in str(exc.value)
    assert isinstance(exc.value, NnflashError)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5
    db.close()
    assert len(path.read_bytes()) == len(before)


def test_foreign_sqlite_db_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE stuff(x)")
    db.execute("INSERT INTO stuff VALUES (1)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="refusing"):
        ResultsDB(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT x FROM stuff").fetchall() == [(1,)]
    db.close()


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not an nnflash results database"):
        ResultsDB(path)
    assert path.read_bytes() == b"this is not sqlite at all" * 100


def test_readonly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        ResultsDB(tmp_path / "none.db", readonly=True)
    with ResultsDB(tmp_path / "n.db") as st:
        st.add_measurement(**_m("r1"))
    with ResultsDB(tmp_path / "n.db", readonly=True) as st:
        assert len(st.export_rows()) == 1
        with pytest.raises(StoreError):
            st.add_measurement(**_m("r2"))


# ---- uniqueness


def test_same_request_id_stored_once(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        assert st.add_measurement(**_m("r1", status="timeout", latency_ms_median=None))
        assert not st.add_measurement(**_m("r1", status="timeout"))
        assert not st.add_measurement(**_m("r1", status="ok"))
        assert st.count_measurements() == 1
        assert st.has_request("r1") and not st.has_request("r2")


def test_one_ok_per_key(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        assert st.add_measurement(**_m("r1"))
        assert not st.add_measurement(**_m("r2"))  # same key, another ok: refused
        assert st.add_measurement(**_m("r3", threads=2))  # other key
        assert st.add_measurement(**_m("r4", status="crashed"))  # failures accumulate
        assert st.count_measurements() == 3
        assert st.add_measurement(**_m("r5"), visit=1)  # a second visit of the same key
        assert not st.add_measurement(**_m("r6"), visit=1)  # ... once
        assert [r["visit"] for r in st.measurements(status="ok", visit=1)] == [1]
        assert len(st.measurements(status="ok", visit=0)) == 2


def test_is_done_and_failures(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        assert not st.is_done("s1", "pi", "onnxruntime", None)
        st.add_measurement(**_m("a", status="timeout", error="killed after 60 s"))
        st.add_measurement(**_m("b", status="crashed", error="SIGKILL"))
        st.add_measurement(**_m("c", spec_id="s2", threads=4, status="runtime_error"))
        assert st.failure_count("s1", "pi", "onnxruntime", None) == 2
        assert st.failure_count("s2", "pi", "onnxruntime", None) == 0
        assert st.failure_count("s2", "pi", "onnxruntime", 4) == 1
        assert st.failure_counts("pi", "onnxruntime", None) == {"s1": 2}
        assert not st.is_done("s1", "pi", "onnxruntime", None)
        st.add_measurement(**_m("d"))
        assert st.is_done("s1", "pi", "onnxruntime", None)
        assert not st.is_done("s1", "pi", "onnxruntime", 4)
        assert not st.is_done("s1", "pi", "tflite", None)
        assert not st.is_done("s1", "pi2", "onnxruntime", None)
        assert st.done_spec_ids("pi", "onnxruntime", None) == {"s1"}
        assert st.done_spec_ids("pi", "onnxruntime", None, visit=1) == set()
        assert not st.is_done("s1", "pi", "onnxruntime", None, visit=1)
        st.add_measurement(**_m("e", status="timeout"), visit=1)
        assert st.failure_counts("pi", "onnxruntime", None) == {"s1": 3}  # over all visits


# ---- other tables


def test_specs_artifacts_devices_campaigns_cost_models(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        assert st.add_spec("s1", "dense", {"family": "dense", "depth": 3})
        assert not st.add_spec("s1", "dense", "{}")
        assert json.loads(st.get_spec("s1")["json"]) == {"depth": 3, "family": "dense"}
        assert st.spec_ids() == ["s1"]
        assert st.get_spec("nope") is None

        sha = "a" * 64
        assert st.add_artifact(sha, "s1", "onnx", "/x/a.onnx", 123, "torch.onnx", {"torch": "2"})
        assert not st.add_artifact(sha, "s1", "onnx", "/x/a.onnx", 123)
        art = st.find_artifact("s1", "onnx")
        assert art["sha256"] == sha and art["size"] == 123 and art["versions"] == {"torch": "2"}
        assert st.find_artifact("s1", "tflite") is None

        st.add_device_facts("pi", {"machine": "armv7l"})
        st.add_device_facts("pi", {"machine": "aarch64"})
        assert st.latest_device_facts("pi") == {"machine": "aarch64"}
        assert st.latest_device_facts("nope") is None

        cid = st.create_campaign({"devices": ["pi"], "threads": None})
        assert st.get_campaign(cid)["status"] == "running"
        st.set_campaign_status(cid, "done")
        camp = st.get_campaign(cid)
        assert camp["status"] == "done" and camp["args"] == {"devices": ["pi"], "threads": None}
        with pytest.raises(StoreError):
            st.set_campaign_status(cid + 100, "done")

        st.add_cost_model("pi", "onnxruntime", None, {"kind": "linear", "w": [1]})
        st.add_cost_model("pi", "onnxruntime", None, '{"kind": "linear", "w": [2]}')
        got = st.latest_cost_model("pi", "onnxruntime", None)
        assert json.loads(got["json"])["w"] == [2]
        assert st.latest_cost_model("pi", "onnxruntime", 4) is None


def test_measurement_json_columns_and_campaign_fk(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        cid = st.create_campaign({})
        st.add_measurement(
            **_m(
                "r1",
                campaign_id=cid,
                energy_mj=2.5,
                samples=[1.0, 1.1],
                summary={"n": 2},
                state={"before": {"temp_c": 40}},
                energy={"meter": "ina219"},
            )
        )
        full = st.get_measurement("r1")
        assert full["samples"] == [1.0, 1.1] and full["summary"] == {"n": 2}
        assert full["state"] == {"before": {"temp_c": 40}} and full["energy"]["meter"] == "ina219"
        assert st.measurements(campaign_id=cid)[0]["energy_mj"] == 2.5
        assert st.measurements(campaign_id=cid + 1) == []
        with pytest.raises(StoreError):
            st.add_measurement(**_m("r2", spec_id="s9", campaign_id=cid + 99))  # no campaign
        with pytest.raises(StoreError):
            st.add_measurement(**_m(""))


def test_nan_stored_as_null(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        st.add_measurement(**_m("r1", latency_ms_p90=float("nan")))
        assert st.get_measurement("r1")["latency_ms_p90"] is None


# ---- agent responses


AGENT_RESPONSE = {
    "v": 1,
    "id": "abc-1",
    "status": "ok",
    "error": None,
    "result": {
        "latency_ms_median": 0.5,
        "latency_ms_mean": 0.6,
        "latency_ms_p90": 0.8,
        "samples_ms": [0.5, 0.6, 0.8],
        "state_before": {"temp_c": 41.0},
        "state_after": {"temp_c": 43.0},
        "energy": {"meter": "estimate", "energy_mj_per_inference": 1.25},
        "runtime": "onnxruntime",
        "n_samples": 3,
    },
}


def test_measurement_fields_and_add_response(tmp_path: Path) -> None:
    f = measurement_fields(AGENT_RESPONSE)
    assert f["request_id"] == "abc-1" and f["status"] == "ok" and f["energy_mj"] == 1.25
    assert f["samples"] == [0.5, 0.6, 0.8]
    assert f["state"] == {"before": {"temp_c": 41.0}, "after": {"temp_c": 43.0}}
    assert f["summary"] == {
        "latency_ms_median": 0.5,
        "latency_ms_mean": 0.6,
        "latency_ms_p90": 0.8,
        "runtime": "onnxruntime",
        "n_samples": 3,
    }
    failed = {"v": 1, "id": "x", "status": "timeout", "error": "killed", "result": None}
    g = measurement_fields(failed)
    assert g["status"] == "timeout" and g["latency_ms_median"] is None and g["summary"] is None
    with ResultsDB(tmp_path / "n.db") as st:
        assert st.add_response(AGENT_RESPONSE, spec_id="s", device="local", runtime="onnxruntime", threads=None)
        assert not st.add_response(AGENT_RESPONSE, spec_id="s", device="local", runtime="onnxruntime", threads=None)
        assert st.add_response(failed, spec_id="s", device="local", runtime="tflite", threads=1)
        rows = st.export_rows()
        assert [r["status"] for r in rows] == ["ok", "timeout"]
        assert rows[0]["energy_mj"] == 1.25 and rows[1]["energy_mj"] is None


# ---- exports


def test_exports(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "n.db") as st:
        st.add_measurement(**_m("r1", energy_mj=None))
        st.add_measurement(**_m("r2", spec_id="s2", status="timeout", error='a, "b"'))
        rows = st.export_rows()
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    buf = io.StringIO()
    assert write_csv(rows, buf) == 2
    parsed = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert parsed[1]["error"] == 'a, "b"' and parsed[0]["energy_mj"] == ""
    buf = io.StringIO()
    assert write_jsonl(rows, buf) == 2
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert lines[0]["energy_mj"] is None and lines[0]["latency_ms_median"] == 1.0
    for key in ("spec_id", "device", "runtime", "threads", "status", "latency_ms_p90"):
        assert key in lines[0]


# ---- concurrency


def test_concurrent_writers_threads(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    ResultsDB(path).close()
    shared = ResultsDB(path)
    errors = []

    def worker(k: int) -> None:
        # half the threads use the shared ResultsDB, half their own connection
        st = shared if k % 2 else ResultsDB(path)
        try:
            for i in range(50):
                st.add_measurement(**_m(f"r{k}-{i}", spec_id=f"s{k}-{i}"))
                st.add_measurement(**_m(f"r{k}-{i}", spec_id=f"s{k}-{i}"))  # duplicate
                st.add_measurement(**_m(f"dup-{i}", spec_id="same"))  # raced by every thread
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            if st is not shared:
                st.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert shared.count_measurements() == 8 * 50 + 1
    shared.close()


# ---- trainings and proxies (schema 3)


def test_trainings_one_ok_per_key_and_failures_accumulate(tmp_path):
    with ResultsDB(tmp_path / "t.db") as st:
        key = {"spec_id": "aaaaaaaaaaaa", "dataset": "fashion-mnist", "protocol_hash": "e04bb0b1fb6e", "seed": 0}
        assert st.add_training(**key, status="diverged", error="loss is nan at epoch 2")
        assert st.add_training(**key, status="failed", error="worker lost")
        assert st.training_failure_counts("fashion-mnist", "e04bb0b1fb6e", 0) == {"aaaaaaaaaaaa": 2}
        assert st.trained_spec_ids("fashion-mnist", "e04bb0b1fb6e", 0) == set()
        rec = {"train_loss": [1.2, 0.8], "wall_s": 61.5, "torch_device": "cpu"}
        assert st.add_training(**key, status="ok", val_accuracy=0.87, test_accuracy=0.86, record=rec)
        assert not st.add_training(**key, status="ok", val_accuracy=0.5, test_accuracy=0.5)  # not twice
        assert st.trained_spec_ids("fashion-mnist", "e04bb0b1fb6e", 0) == {"aaaaaaaaaaaa"}
        assert st.trained_spec_ids("fashion-mnist", "e04bb0b1fb6e", 1) == set()  # another seed
        ok = st.trainings(dataset="fashion-mnist", status="ok")
        assert len(ok) == 1 and ok[0]["record"] == rec and ok[0]["val_accuracy"] == 0.87
        assert len(st.trainings(spec_ids=["aaaaaaaaaaaa"])) == 3
        assert st.trainings(protocol_hash="000000000000") == []


def test_training_bad_status_or_missing_accuracy_is_an_error(tmp_path):
    with ResultsDB(tmp_path / "t.db") as st:
        key = {"spec_id": "a", "dataset": "d", "protocol_hash": "p", "seed": 0}
        with pytest.raises(StoreError, match="status"):
            st.add_training(**key, status="done")
        with pytest.raises(StoreError, match="accuracy"):
            st.add_training(**key, status="ok", val_accuracy=0.9)
        assert st.trainings() == []


def test_training_protocols_and_proxies(tmp_path):
    with ResultsDB(tmp_path / "t.db") as st:
        assert st.add_training_protocol("e04bb0b1fb6e", "quick", {"epochs": 3})
        assert not st.add_training_protocol("e04bb0b1fb6e", "quick", {"epochs": 3})
        assert st.get_training_protocol("e04bb0b1fb6e")["json"] == {"epochs": 3}
        assert st.get_training_protocol("nope") is None
        st.add_proxies("a", "fashion-mnist", "b0", {"synflow": 1.5, "naswot": 200.0})
        st.add_proxies("a", "fashion-mnist", "b0", {"synflow": 2.5, "naswot": 210.0})  # replaced
        st.add_proxies("b", "fashion-mnist", "b0", {"synflow": 0.5})
        assert st.proxies("fashion-mnist", "b0") == {
            "a": {"synflow": 2.5, "naswot": 210.0},
            "b": {"synflow": 0.5},
        }
        assert st.proxies("fashion-mnist", "b0", spec_ids=["b"]) == {"b": {"synflow": 0.5}}
        assert st.proxies("cifar10", "b0") == {}
