"""The campaign orchestration below the CLI (``nnflash.controller.profiling``) with a fake device and
a fake exporter."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

from nnflash.controller import profiling
from nnflash.controller.campaign import MeasureSettings
from nnflash.controller.inventory import Device
from nnflash.controller.store import ResultsDB
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(4, seed=3)


@dataclasses.dataclass(frozen=True)
class _Art:
    spec_id: str
    path: Path
    sha256: str
    format: str = "onnx"
    size: int = 1
    exporter: str = "fake"
    versions: tuple[tuple[str, str], ...] = ()


def _fake_export(spec: Any, fmt: str, out_dir: Any, **kw: Any) -> _Art:
    path = Path(out_dir) / f"{spec.spec_id}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return _Art(spec.spec_id, path, f"{spec.spec_id:0<64}"[:64], fmt)


class _FakeConn:
    """Answers ``measure`` with a fixed result; ``on_measure`` runs before each answer."""

    facts: dict[str, Any] = {"machine": "fake"}

    def __init__(self, on_measure: Optional[Any] = None) -> None:
        self.on_measure = on_measure
        self.measured = 0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def put_artifact(self, path: Any, sha256: str, fmt: str, verify_existing: bool = False) -> None:
        pass

    def request(self, verb: str, args: dict, *, timeout_s: float, request_id: str) -> dict[str, Any]:
        assert verb == "measure"
        self.measured += 1
        if self.on_measure is not None:
            self.on_measure(self.measured)
        result = {"latency_ms_median": 1.0, "latency_ms_mean": 1.1, "latency_ms_p90": 1.2, "samples_ms": [1.0]}
        return {"status": "ok", "result": result}

    def results(self, ids: list[str]) -> dict[str, Any]:
        return {}


class _Recorder(profiling.CampaignObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def planned(self, todo: Any) -> None:
        self.calls.append(("planned", {d: list(ids) for d, ids in todo.items()}))

    def measured(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(("measured", row["spec_id"]))

    def event(self, device: str, event: str) -> None:
        with self.lock:
            self.calls.append(("event", (device, event)))

    def stopping(self, abandon: bool) -> None:
        self.calls.append(("stopping", abandon))

    def closed(self) -> None:
        self.calls.append(("closed", None))

    def names(self, kind: str) -> list[Any]:
        return [v for k, v in self.calls if k == kind]


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import nnflash.models.export

    monkeypatch.setattr(nnflash.models.export, "export_spec", _fake_export)


DEV = Device(name="fake", host="fake.invalid")
FAST = MeasureSettings(threads=1, repeat=3)


def test_run_campaign_reports_stores_and_closes(tmp_path: Path, fake_export: None) -> None:
    conn = _FakeConn()
    rec = _Recorder()
    db = tmp_path / "n.db"
    handler = signal.getsignal(signal.SIGINT)
    result = profiling.run_campaign(
        SPECS, [DEV], FAST, db, tmp_path / "art", connect=lambda d: conn, args={"command": "test"}, observer=rec
    )
    assert not result.interrupted and result.devices["fake"].ok == len(SPECS)
    assert rec.calls[0] == ("planned", {"fake": [s.spec_id for s in SPECS]})
    assert rec.calls[-1] == ("closed", None)
    assert sorted(rec.names("measured")) == sorted(s.spec_id for s in SPECS)
    assert rec.names("event").count(("fake", "done")) == len(SPECS)
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    store = ResultsDB(db)  # closed by run_campaign: opening it for writing works
    try:
        assert len(store.measurements(device="fake", status="ok")) == len(SPECS)
    finally:
        store.close()
    # resumable: nothing left to measure, the observer is told so
    rec2 = _Recorder()
    again = profiling.run_campaign(SPECS, [DEV], FAST, db, tmp_path / "art", connect=lambda d: conn, observer=rec2)
    assert again.devices["fake"].skipped == len(SPECS) and rec2.names("planned") == [{"fake": []}]


def test_ctrl_c_finishes_the_measurement_in_flight(tmp_path: Path, fake_export: None) -> None:
    def interrupt_first(k: int) -> None:
        if k == 1:
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(0.5)  # the handler runs on the main thread meanwhile

    rec = _Recorder()
    handler = signal.getsignal(signal.SIGINT)
    conn = _FakeConn(interrupt_first)
    result = profiling.run_campaign(
        SPECS, [DEV], FAST, tmp_path / "n.db", tmp_path / "art", connect=lambda d: conn, observer=rec
    )
    assert result.interrupted
    assert rec.names("stopping") == [False]
    assert rec.names("measured") == [SPECS[0].spec_id]  # finished and stored, no new one started
    assert rec.calls[-1] == ("closed", None)
    assert signal.getsignal(signal.SIGINT) is handler


def test_profile_in_passes_takes_one_visit_per_pass(tmp_path: Path, fake_export: None) -> None:
    seen: list[str] = []

    def observer_for(k: int) -> profiling.CampaignObserver:
        seen.append(f"pass {k}")
        return profiling.CampaignObserver()

    db = tmp_path / "n.db"
    done = profiling.profile_in_passes(
        SPECS, [DEV], FAST, db, tmp_path / "art", passes=3, connect=lambda d: _FakeConn(), observer_for=observer_for
    )
    assert seen == ["pass 0", "pass 1", "pass 2"] and done.interrupted_pass is None
    assert sorted(r["visit"] for r in done.rows) == sorted([0, 1, 2] * len(SPECS))
    assert {r["spec_id"] for r in done.rows} == {s.spec_id for s in SPECS}
    assert done.rows == profiling.stored_rows(db, ["fake"], "onnxruntime", 1)
    assert profiling.stored_rows(db, ["fake"], "onnxruntime", None) == []


def test_profile_in_passes_stops_after_an_interrupted_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnflash.controller.campaign import CampaignResult

    visits: list[int] = []

    def fake_run(specs: Any, *a: Any, visit: int = 0, args: Any = None, **kw: Any) -> CampaignResult:
        visits.append(visit)
        assert args == {"command": "x", "visit": visit, "passes": 4}
        return CampaignResult(campaign_id=visit + 1, interrupted=visit == 1)

    monkeypatch.setattr(profiling, "run_campaign", fake_run)
    done = profiling.profile_in_passes(SPECS, [DEV], FAST, tmp_path / "n.db", tmp_path, passes=4, args={"command": "x"})
    assert visits == [0, 1] and done.interrupted_pass == 2 and done.rows == []


def test_a_device_that_failed_a_pass_is_left_out_of_later_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnflash.controller.campaign import CampaignResult, DeviceReport

    other = Device(name="other", host="other.invalid")
    asked: list[list[str]] = []

    def fake_run(specs: Any, devices: Any, *a: Any, visit: int = 0, **kw: Any) -> CampaignResult:
        asked.append([d.name for d in devices])
        reports = {d.name: DeviceReport(d.name, error="unreachable" if d.name == "fake" else None) for d in devices}
        return CampaignResult(campaign_id=visit + 1, devices=reports)

    monkeypatch.setattr(profiling, "run_campaign", fake_run)
    ResultsDB(tmp_path / "n.db").close()
    done = profiling.profile_in_passes(SPECS, [DEV, other], FAST, tmp_path / "n.db", tmp_path, passes=3)
    assert asked == [["fake", "other"], ["other"], ["other"]] and done.interrupted_pass is None
    asked.clear()
    profiling.profile_in_passes(SPECS, [DEV], FAST, tmp_path / "n.db", tmp_path, passes=3)
    assert asked == [["fake"]]  # nothing left to ask: no further pass
