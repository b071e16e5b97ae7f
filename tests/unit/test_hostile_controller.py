"""A broken or malicious agent cannot break the controller (issue 12, section 2).

A fake agent (a test double for the connection: a script speaking the wire protocol over the local
transport) answers ``hello`` properly and then misbehaves in one way per test: garbage, truncated
lines, answers for the wrong request or for requests never sent, a line just over the controller's
(configurable) length cap, malformed measurements, a hostile hello or journal lookup. Each time the
campaign ends in bounded time, the device is marked failed with a reason naming what the agent did,
nothing it sent is stored (no fake number is ever stored), and the database passes its integrity
check. The fake agent never produces an ``ok`` row that could be taken for a measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nnflash.controller.campaign import Campaign, MeasureSettings
from nnflash.controller.errors import ProtocolViolation
from nnflash.controller.inventory import Device
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import make_connection
from nnflash.controller.transport.base import MAX_NOISE_LINES, check_measure_response
from nnflash.models.space import get_space
from nnflash_agent import protocol as P

REPO_ROOT = Path(__file__).resolve().parents[2]
CAP = 4096  # the controller's line cap in these tests (max_line_bytes)
SPECS = get_space("flash").sample(2, seed=5)

FAKE_AGENT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from nnflash_agent import protocol as P

mode, state, cap = sys.argv[2], sys.argv[3], int(sys.argv[4])
out = sys.stdout.buffer


def send(data):
    out.write(data)
    out.flush()


def answer(rid, status="ok", result=None, error=None):
    send(P.encode(P.make_response(rid, status, result, error)))


session = 0
if os.path.exists(state):
    session = int(open(state).read() or 0)
open(state, "w").write(str(session + 1))

for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    rid, verb = msg["id"], msg["verb"]
    if verb == "hello":
        store = "../../etc" if mode == "bad_hello" else os.path.dirname(os.path.abspath(state)) + "/store"
        answer(rid, result={"protocol": P.PROTOCOL_VERSION, "store_dir": store, "facts": {"agent": "evil"}})
        if mode == "unsolicited":
            answer("c1-someone-else", result={"latency_ms_median": 1.0})
        continue
    if verb == "bye":
        answer(rid, result={})
        break
    if verb == "results":
        answer(rid, result={"results": [1, 2, 3]} if mode == "drop_then_bad_results" else {"results": {}})
        continue
    if verb != "measure":
        answer(rid, result={})
        continue
    if mode == "garbage":
        send(os.urandom(64).replace(b"\n", b"") + b"\n")
        send(b"{" + bytes(range(1, 10)) + b"\n")
    elif mode == "truncated":
        send(P.encode(P.make_response(rid, result={"latency_ms_median": 1.0}))[:25] + b"\n")
    elif mode == "wrong_id":
        answer("not-" + rid, result={"latency_ms_median": 1.0})
    elif mode == "no_id":
        answer(None, "bad_json", None, "could not read that")
    elif mode == "over_cap":  # a well-formed answer one byte over the cap
        line = P.encode(P.make_response(rid, "runtime_error", None, ""))
        line = P.encode(P.make_response(rid, "runtime_error", None, "x" * (cap + 1 - len(line) + 1)))
        assert len(line) == cap + 2, len(line)
        send(line)
    elif mode == "endless":  # bytes without a newline, forever
        while True:
            send(b"a" * 1000)
    elif mode == "noise_flood":
        for k in range(10_000):
            send(b"noise %d\n" % k)
    elif mode == "nan_result":  # 1e999 is inf once parsed
        send(b'{"v":%d,"id":"%s","status":"ok","error":null,"result":{"latency_ms_median":1e999}}\n'
             % (P.PROTOCOL_VERSION, rid.encode()))
    elif mode == "string_result":
        answer(rid, result={"latency_ms_median": "fast", "samples_ms": ["a"]})
    elif mode == "unknown_status":
        send(P.encode({"v": P.PROTOCOL_VERSION, "id": rid, "status": "pwned", "error": None, "result": None}))
    elif mode == "extra_field":
        send(P.encode({**P.make_response(rid, "runtime_error", None, "x"), "exec": "rm -rf /"}))
    elif mode == "drop_then_bad_results":
        os._exit(1)  # the connection drops mid-measurement; the reconnect asks the journal
    else:
        raise SystemExit("unknown mode " + mode)
"""


@dataclasses.dataclass(frozen=True)
class _Artifact:
    """An exported file (test double for the exporter: the bytes are never measured)."""

    spec_id: str
    path: Path
    sha256: str
    format: str = "onnx"
    size: int = 0
    exporter: str = "test"
    versions: tuple[tuple[str, str], ...] = ()


def _export(spec: Any, fmt: str, out_dir: Any, **kw: Any) -> _Artifact:
    data = f"not a model: {spec.spec_id}".encode()
    path = Path(out_dir) / f"{spec.spec_id}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return _Artifact(spec.spec_id, path, hashlib.sha256(data).hexdigest(), fmt, len(data))


def run_against(tmp_path: Path, mode: str) -> tuple[Any, float]:
    script = tmp_path / "evil_agent.py"
    script.write_text(FAKE_AGENT)
    argv = [sys.executable, str(script), str(REPO_ROOT / "src"), mode, str(tmp_path / "sessions"), str(CAP)]
    dev = Device(name="evil", kind="local", agent_command=shlex.join(argv))
    settings = MeasureSettings(repeat=1, timeout_s=5.0, answer_margin_s=2.0)
    t0 = time.monotonic()
    with ResultsDB(tmp_path / "db.sqlite") as store:
        result = Campaign(
            SPECS,
            [dev],
            settings,
            store,
            tmp_path / "art",
            connect=lambda d: make_connection(d, max_line_bytes=CAP, hello_timeout_s=10.0),
            export_fn=_export,
            reconnect_attempts=2,
        ).run()
    return result, time.monotonic() - t0


def check_db(tmp_path: Path) -> list[tuple]:
    db = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT spec_id, status, latency_ms_median FROM measurements").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("garbage", "malformed JSON"),
        ("truncated", "malformed JSON"),
        ("wrong_id", "never sent"),
        ("unsolicited", "never sent"),
        ("no_id", "without a request id"),
        ("over_cap", f"longer than {CAP} bytes"),
        ("endless", f"longer than {CAP} bytes"),
        ("noise_flood", "noise"),
        ("nan_result", "latency_ms_median"),
        ("string_result", "latency_ms_median"),
        ("unknown_status", "unknown status"),
        ("extra_field", "unknown field(s) exec"),
        ("bad_hello", "store_dir"),
        ("drop_then_bad_results", "results answer"),
    ],
)
def test_hostile_agent_fails_its_device_and_nothing_else(tmp_path: Path, mode: str, reason: str) -> None:
    result, wall_s = run_against(tmp_path, mode)
    rep = result.devices["evil"]
    assert rep.error and "agent broke the protocol" in rep.error and reason in rep.error, rep.error
    assert "\n" not in rep.error and len(rep.error) < 2000
    assert rep.ok == 0 and not result.interrupted
    assert wall_s < 30, f"the campaign took {wall_s:.1f} s"
    assert check_db(tmp_path) == [], "nothing the hostile agent sent is stored"
    # a failed device is not retried for nothing: at most one reconnect (the drop test's)
    sessions = int((tmp_path / "sessions").read_text())
    assert sessions <= 2


def test_noise_below_the_limit_is_tolerated() -> None:
    assert MAX_NOISE_LINES >= 10  # a login script's few lines do not fail a device


@pytest.mark.parametrize(
    "response",
    [
        {"status": "ok", "result": None},
        {"status": "ok", "result": {"latency_ms_median": 0}},
        {"status": "ok", "result": {"latency_ms_median": True}},
        {"status": "ok", "result": {"latency_ms_median": 10**400}},
        {"status": "ok", "result": {"latency_ms_median": 1.0, "latency_ms_p90": -1.0}},
        {"status": "ok", "result": {"latency_ms_median": 1.0, "samples_ms": [1.0, None]}},
        {"status": "ok", "result": {"latency_ms_median": 1.0, "samples_ms": "1,2"}},
        {"status": "ok", "result": [1.0]},
        {"status": "ok", "id": "other", "result": {"latency_ms_median": 1.0}},
        {"status": None},
        {"status": ["ok"]},
    ],
)
def test_malformed_measure_answers_are_violations(response: dict) -> None:
    with pytest.raises(ProtocolViolation):
        check_measure_response(response, "r-1")


def test_well_formed_measure_answers_pass() -> None:
    ok = {"v": P.PROTOCOL_VERSION, "id": "r-1", "status": "ok", "error": None}
    check_measure_response({**ok, "result": {"latency_ms_median": 2.5, "samples_ms": [2.4, 2.5]}}, "r-1")
    check_measure_response({**ok, "status": P.TIMEOUT, "error": "too slow", "result": None}, "r-1")


def test_endless_stderr_line_does_not_grow_memory() -> None:
    """The agent's stderr is kept as a short tail for error messages: 20 MB without a newline must
    not be held in memory."""
    import tracemalloc

    from nnflash.controller.transport.local import LocalConnection

    chunks = iter([b"x" * (1 << 20)] * 20 + [b"\nlast line\n", b""])
    conn = LocalConnection(Device(name="noisy", kind="local", agent_command="true"))
    tracemalloc.start()
    try:
        conn._start_stderr_reader(lambda: next(chunks))
        for t in conn._threads:
            t.join(30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert conn.stderr_tail[-1] == "last line" and all(len(x) <= 500 for x in conn.stderr_tail)
