"""``nnflash-agent serve`` as a real subprocess speaking the protocol: every bad request gets an
error response and the agent keeps serving; real measurements with both runtimes; crashes, hangs
and runtime errors of the isolated worker become responses."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nnflash_agent import protocol as P

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "protocol"
SELFTEST_TFLITE = ROOT / "agent" / "data" / "selftest.tflite"

# The disturbed gate is off here (these tests check the protocol, not whether the test machine was
# quiet: tests/unit/test_agent_disturbance.py does that).
QUICK = {
    "repeat": 6,
    "min_repeat_ms": 2.0,
    "warmup_s": 0.0,
    "threads": 1,
    "timeout_s": 60.0,
    "disturbed_share_max": None,
}


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def tiny_onnx_bytes() -> bytes:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((32, 64)).astype("float32"), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 10)).astype("float32"), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("MatMul", ["hr", "w2"], ["y"]),
        ],
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class AgentProc:
    def __init__(self, tmp: Path, hooks: bool = True, extra: tuple = ()) -> None:
        self.store = tmp / "store"
        self.journal = tmp / "journal.jsonl"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        if hooks:
            env["NNFLASH_AGENT_TEST_HOOKS"] = "1"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nnflash_agent.cli",
                "serve",
                "--store",
                str(self.store),
                "--journal",
                str(self.journal),
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(tmp),
            env=env,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.stderr_chunks: list = []
        threading.Thread(target=self._pump_err, daemon=True).start()
        self.n = 0

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_chunks.append(line)

    def send_raw(self, data: bytes, timeout: float = 60.0) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        line = self.lines.get(timeout=timeout)
        assert line is not None, "agent exited: " + b"".join(self.stderr_chunks).decode()
        # stdout carries only protocol lines: each one a JSON object with the response fields
        msg = json.loads(line)
        assert set(msg) == {"v", "id", "status", "error", "result"}
        return msg

    def ask(self, verb: str, args=None, rid=None, timeout: float = 60.0) -> dict:
        self.n += 1
        rid = rid or f"r{self.n}"
        resp = self.send_raw(P.encode(P.make_request(verb, rid, args)), timeout)
        assert resp["id"] == rid
        return resp

    def alive(self) -> None:
        r = self.ask("hello")
        assert r["status"] == "ok" and r["result"]["protocol"] == P.PROTOCOL_VERSION

    def put(self, data: bytes, fmt: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.store.mkdir(parents=True, exist_ok=True)
        (self.store / f"{sha}.{fmt}").write_bytes(data)
        return sha

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.ask("bye", timeout=10)
            except Exception:
                pass
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def agent(tmp_path):
    a = AgentProc(tmp_path)
    yield a
    a.close()


def measure_args(sha: str, fmt: str = "onnx", runtime: str = "onnxruntime", **kw) -> dict:
    args = {"artifact": {"sha256": sha, "format": fmt}, "runtime": runtime}
    args.update(QUICK)
    args.update(kw)
    return args


def test_hello_info_list_and_bye_exit_code(tmp_path):
    a = AgentProc(tmp_path)
    r = a.ask("hello")
    assert r["status"] == "ok"
    assert r["result"]["agent_version"] and "runtimes" in r["result"]["facts"]
    assert a.ask("info")["status"] == "ok"
    assert a.ask("list")["result"] == {"artifacts": []}
    assert a.ask("bye")["status"] == "ok"
    assert a.proc.wait(timeout=10) == 0


def test_end_of_input_exits_cleanly(tmp_path):
    a = AgentProc(tmp_path)
    a.alive()
    assert a.proc.stdin is not None
    a.proc.stdin.close()
    assert a.proc.wait(timeout=10) == 0


BAD_LINES = [
    (b"this is not json\n", P.BAD_JSON, None),
    (b'{"v": 2, "id": "x", \n', P.BAD_JSON, None),
    (b"[1, 2, 3]\n", P.BAD_JSON, None),
    (b"\xff\xfe\xfd\n", P.BAD_JSON, None),
    (b'{"v":2,"id":"b1","verb":"teleport"}\n', P.UNKNOWN_VERB, "b1"),
    (b'{"v":2,"verb":"hello"}\n', P.BAD_REQUEST, None),  # missing id
    (b'{"v":2,"id":"b2"}\n', P.BAD_REQUEST, "b2"),  # missing verb
    (b'{"id":"b3","verb":"hello"}\n', P.BAD_REQUEST, "b3"),  # missing version
    (b'{"v":"1","id":"b4","verb":"hello"}\n', P.BAD_REQUEST, "b4"),  # wrong type
    (b'{"v":2,"id":7,"verb":"hello"}\n', P.BAD_REQUEST, None),  # wrong type of id
    (b'{"v":2,"id":"b5","verb":"hello","args":[1]}\n', P.BAD_REQUEST, "b5"),
    (b'{"v":1,"id":"b6","verb":"hello"}\n', P.VERSION_MISMATCH, "b6"),
    (b'{"v":2,"id":"b7","verb":"measure","args":{}}\n', P.BAD_REQUEST, "b7"),  # missing fields
    (
        b'{"v":2,"id":"b8","verb":"measure","args":{"artifact":{"sha256":"'
        + b"a" * 64
        + b'","format":"onnx"},"runtime":"onnxruntime","repeat":"ten"}}\n',
        P.BAD_REQUEST,
        "b8",
    ),
    (
        b'{"v":2,"id":"b9","verb":"measure","args":{"artifact":{"sha256":"'
        + b"a" * 64
        + b'","format":"onnx"},"runtime":"onnxruntime"}}\n',
        P.MISSING_ARTIFACT,
        "b9",
    ),
    (b'{"v":2,"id":"b10","verb":"results","args":{"ids":"b9"}}\n', P.BAD_REQUEST, "b10"),
]


def test_every_bad_request_gets_an_error_and_the_agent_keeps_serving(agent):
    for line, status, rid in BAD_LINES:
        r = agent.send_raw(line)
        assert r["status"] == status, (line, r)
        assert r["id"] == rid and r["result"] is None
        assert r["error"] and "\n" not in r["error"]
        agent.alive()
    mismatch = agent.send_raw(b'{"v":3,"id":"vv","verb":"hello"}\n')
    assert "v3" in mismatch["error"] and "v2" in mismatch["error"]


def test_corrupt_artifact_keeps_serving(agent):
    sha = agent.put(b"some model bytes", "onnx")
    (agent.store / f"{sha}.onnx").write_bytes(b"some model bytes, altered after upload")
    r = agent.ask("measure", measure_args(sha), rid="corrupt-1")
    assert r["status"] == P.CORRUPT_ARTIFACT
    agent.alive()
    assert agent.ask("results", {"ids": ["corrupt-1"]})["result"]["results"]["corrupt-1"] == r


@pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")
def test_measure_onnxruntime_real(agent):
    sha = agent.put(tiny_onnx_bytes(), "onnx")
    assert agent.ask("list")["result"]["artifacts"][0]["sha256"] == sha
    r = agent.ask("measure", measure_args(sha, energy="estimate", energy_idle_s=0.2), rid="m-ort")
    assert r["status"] == "ok", r
    res = r["result"]
    for key in json.loads((FIXTURES / "measure_result_fields.json").read_text()):
        assert key in res, key
    for key in json.loads((FIXTURES / "energy_fields.json").read_text()):
        assert key in res["energy"], key
    assert res["runtime"] == "onnxruntime" and res["runtime_version"]
    assert res["isolated"] is True and res["pid"] != agent.proc.pid
    assert res["repeat"] == 6 and len(res["samples_ms"]) == 6 and res["number"] >= 1
    assert 0 < res["latency_ms_min"] <= res["latency_ms_median"] <= res["latency_ms_max"]
    lo, hi = res["latency_ms_ci95"]
    assert lo <= res["latency_ms_median"] <= hi
    assert res["inputs"] == [{"name": "x", "shape": [1, 32], "dtype": "float32"}]
    assert res["load_ms"] > 0 and res["first_inference_ms"] > 0
    assert res["energy"]["estimated"] is True
    assert isinstance(res["flags"], list)
    # journaled (fsync) before it was sent, retrievable by id
    got = agent.ask("results", {"ids": ["m-ort"]})["result"]["results"]["m-ort"]
    assert got == r
    entries = [json.loads(x) for x in agent.journal.read_text().splitlines()]
    assert entries[-1]["id"] == "m-ort"


@pytest.mark.skipif(not SELFTEST_TFLITE.exists(), reason="bundled tflite model missing")
@pytest.mark.skipif(not (have("ai_edge_litert") or have("tflite_runtime")), reason="no TFLite runtime")
def test_measure_tflite_real(agent):
    sha = agent.put(SELFTEST_TFLITE.read_bytes(), "tflite")
    r = agent.ask("measure", measure_args(sha, "tflite", "tflite", threads=2), rid="m-tfl")
    assert r["status"] == "ok", r
    res = r["result"]
    assert res["runtime"] == "tflite" and res["threads"] == 2
    assert res["inputs"][0]["shape"] == [1, 3, 32, 32] or res["inputs"][0]["shape"][-1] in (3, 32)
    assert len(res["samples_ms"]) == 6


@pytest.mark.skipif(not have("litert_torch") or not have("ai_edge_litert"), reason="no litert")
def test_measure_tflite_converted_in_test(agent, tmp_path):
    """A TFLite model made here from torch (litert-torch), measured by the agent."""
    code = (
        "import sys, torch, litert_torch\n"
        "m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))\n"
        "litert_torch.convert(m.eval(), (torch.randn(1, 16),)).export(sys.argv[1])\n"
    )
    out = tmp_path / "mlp.tflite"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True, timeout=120)
    sha = agent.put(out.read_bytes(), "tflite")
    r = agent.ask("measure", measure_args(sha, "tflite", "tflite"))
    assert r["status"] == "ok", r
    assert r["result"]["inputs"] == [{"name": r["result"]["inputs"][0]["name"], "shape": [1, 16], "dtype": "float32"}]


@pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")
def test_sha_consistent_garbage_model_is_runtime_error(agent):
    sha = agent.put(b"\x08\x07" + os.urandom(300), "onnx")  # right name, not a model
    r = agent.ask("measure", measure_args(sha), rid="garbage")
    assert r["status"] == P.RUNTIME_ERROR, r
    assert "onnxruntime" in r["error"]
    agent.alive()


@pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")
@pytest.mark.parametrize(
    "fault, status",
    [("kill", P.CRASHED), ("exit", P.CRASHED), ("raise", P.RUNTIME_ERROR), ("hang", P.TIMEOUT)],
)
def test_worker_faults_become_responses(agent, fault, status):
    sha = agent.put(tiny_onnx_bytes(), "onnx")
    args = measure_args(sha, _test_fault=fault, timeout_s=3.0)
    r = agent.ask("measure", args, rid=f"fault-{fault}")
    assert r["status"] == status, r
    if fault == "kill":
        assert "SIGKILL" in r["error"]
    agent.alive()
    journaled = agent.ask("results", {"ids": [f"fault-{fault}"]})["result"]["results"]
    assert journaled[f"fault-{fault}"]["status"] == status
    # and a normal measurement still works afterwards
    assert agent.ask("measure", measure_args(sha))["status"] == "ok"


def test_test_hooks_are_refused_without_the_env(tmp_path):
    a = AgentProc(tmp_path, hooks=False)
    try:
        r = a.ask("measure", measure_args("b" * 64, _test_fault="kill"))
        assert r["status"] == P.BAD_REQUEST
    finally:
        a.close()


@pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")
def test_cleanup(agent):
    sha = agent.put(tiny_onnx_bytes(), "onnx")
    agent.put(b"other", "tflite")
    assert agent.ask("cleanup", {"sha256": [sha]})["result"] == {"removed": 1}
    assert len(agent.ask("list")["result"]["artifacts"]) == 1
    assert agent.ask("cleanup")["result"] == {"removed": 1}
    assert agent.ask("list")["result"]["artifacts"] == []


@pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")
def test_sigterm_during_a_measurement_takes_the_worker_along(tmp_path):
    import signal
    import time

    import psutil

    a = AgentProc(tmp_path)
    try:
        sha = a.put(tiny_onnx_bytes(), "onnx")
        req = P.make_request("measure", "hang", measure_args(sha, _test_fault="hang", timeout_s=60))
        assert a.proc.stdin is not None
        a.proc.stdin.write(P.encode(req))
        a.proc.stdin.flush()
        parent = psutil.Process(a.proc.pid)
        deadline = time.monotonic() + 20
        workers: list = []
        while time.monotonic() < deadline and not workers:
            workers = parent.children(recursive=True)
            time.sleep(0.05)
        assert workers, "no worker process appeared"
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=10) == 130
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive
    finally:
        if a.proc.poll() is None:
            a.proc.kill()


@pytest.mark.skipif(not have("onnxruntime"), reason="onnxruntime not installed")
def test_prespawn_reuses_a_spare_worker_and_leaves_nothing_behind(tmp_path):
    import time

    import psutil

    a = AgentProc(tmp_path, extra=("--prespawn",))
    try:
        sha = a.put(tiny_onnx_bytes(), "onnx")
        first = a.ask("measure", measure_args(sha))
        assert first["status"] == "ok", first
        parent = psutil.Process(a.proc.pid)
        deadline = time.monotonic() + 10
        spares: list = []
        while time.monotonic() < deadline and not spares:
            spares = parent.children()
            time.sleep(0.05)
        assert len(spares) == 1, "no spare worker after the first measurement"
        second = a.ask("measure", measure_args(sha))
        assert second["status"] == "ok", second
        assert second["result"]["pid"] == spares[0].pid  # the spare ran the job
        assert second["result"]["pid"] != first["result"]["pid"]  # one process per measurement
        # a crash in the spare-run worker is still just a response
        crash = a.ask("measure", measure_args(sha, _test_fault="kill"))
        assert crash["status"] == P.CRASHED
        a.alive()
        time.sleep(0.2)
        spares = parent.children()
        assert a.close() == 0
        gone, alive = psutil.wait_procs(spares, timeout=10)
        assert not alive, "spare worker left behind after bye"
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
