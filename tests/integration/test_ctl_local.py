"""LocalConnection with the real agent subprocess (the built-in ``local`` device)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from nnflash.controller.errors import TransportError
from nnflash.controller.inventory import Device, local_device
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import LocalConnection

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = REPO_ROOT / "agent" / "data" / "selftest.onnx"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (REPO_ROOT / "agent" / "cli.py").is_file() or not MODEL.is_file(),
        reason="the agent (agent/cli.py, agent/data/selftest.onnx) is not present",
    ),
]

# the disturbed gate off: these tests are about the transport, not whether the machine was quiet
QUICK = {"repeat": 3, "warmup_runs": 1, "warmup_s": 0.0, "min_repeat_ms": 1.0, "disturbed_share_max": None}


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _conn(tmp_path: Path) -> LocalConnection:
    return LocalConnection(local_device(), store_dir=tmp_path / "store", journal_path=tmp_path / "journal.jsonl")


def test_hello_put_list(tmp_path: Path) -> None:
    sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    with _conn(tmp_path) as conn:
        assert conn.hello is not None and conn.hello["protocol"] == 2
        assert conn.store_dir == str(tmp_path / "store")
        assert conn.facts.get("machine")
        put = conn.put_artifact(MODEL, sha, "onnx")
        assert put.uploaded and Path(put.remote_path).read_bytes() == MODEL.read_bytes()
        assert not conn.put_artifact(MODEL, sha, "onnx").uploaded
        arts = conn.request("list")["result"]["artifacts"]
        assert arts == [{"sha256": sha, "format": "onnx", "size": MODEL.stat().st_size}]
        bad = conn.request("list", {"unexpected": 1})
        assert bad["status"] == "bad_request"  # an error is a response, the agent keeps serving
        assert conn.request("info")["status"] == "ok"


@pytest.mark.skipif(not _has_onnxruntime(), reason="onnxruntime not installed")
def test_measure_store_and_journal(tmp_path: Path) -> None:
    sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    args = {"artifact": {"sha256": sha, "format": "onnx"}, "runtime": "onnxruntime", **QUICK}
    with _conn(tmp_path) as conn, ResultsDB(tmp_path / "n.db") as db:
        conn.put_artifact(MODEL, sha, "onnx")
        r = conn.request("measure", args, timeout_s=120, request_id="loc-1")
        assert r["status"] == "ok", r["error"]
        assert db.add_response(r, spec_id="selftest", device="local", runtime="onnxruntime", threads=None)
    # a new agent process finds the answer in the journal; storing it again is a no-op
    with _conn(tmp_path) as conn, ResultsDB(tmp_path / "n.db") as db:
        again = conn.results(["loc-1"])["loc-1"]
        assert again["status"] == "ok"
        assert not db.add_response(again, spec_id="selftest", device="local", runtime="onnxruntime", threads=None)
        row = db.get_measurement("loc-1")
        assert row["latency_ms_median"] == r["result"]["latency_ms_median"]
        assert len(row["samples"]) == 3 and db.count_measurements() == 1


@pytest.mark.skipif(not _has_onnxruntime(), reason="onnxruntime not installed")
def test_agent_killed_mid_request(tmp_path: Path) -> None:
    sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    args = {"artifact": {"sha256": sha, "format": "onnx"}, "runtime": "onnxruntime"}
    conn = _conn(tmp_path)
    conn.open()
    conn.put_artifact(MODEL, sha, "onnx")
    pid = conn.pid
    assert pid is not None
    killer = threading.Timer(0.3, os.kill, args=(pid, signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="exited with status -9") as exc:
        conn.request("measure", args, timeout_s=60, request_id="loc-kill")
    killer.join()
    assert exc.value.request_id == "loc-kill" and time.monotonic() - t0 < 10
    conn.open()  # a fresh agent
    assert conn.pid != pid
    assert conn.results(["loc-kill"]) == {"loc-kill": None}  # never answered: measure again
    conn.close()


def test_missing_agent_command(tmp_path: Path) -> None:
    dev = Device(name="nolocal", kind="local", agent_command="/nonexistent/nnflash-agent serve")
    with pytest.raises(TransportError, match="cannot start agent"):
        LocalConnection(dev).open()
