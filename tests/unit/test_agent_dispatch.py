"""nnflash_agent.serve / store / journal / measure options, in process (fast). The real subprocess is in
tests/integration/test_agent_serve.py."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from nnflash_agent import protocol as P
from nnflash_agent.journal import Journal
from nnflash_agent.measure import OPTION_DEFAULTS, parse_options
from nnflash_agent.serve import Agent, serve
from nnflash_agent.store import ArtifactStore, check_artifact_ref, default_journal_path, default_store_dir

SHA_A = "a" * 64


def tiny_onnx(path):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype("float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def put(store_dir, data: bytes, fmt: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    os.makedirs(store_dir, exist_ok=True)
    with open(os.path.join(store_dir, f"{sha}.{fmt}"), "wb") as f:
        f.write(data)
    return sha


@pytest.fixture
def agent(tmp_path):
    return Agent(str(tmp_path / "store"), str(tmp_path / "journal.jsonl"), allow_test_hooks=False)


def ask(agent, verb, args=None, rid="r1"):
    resp, _ = agent.handle_line(P.encode(P.make_request(verb, rid, args)))
    return resp


def test_defaults_follow_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_store_dir() == str(tmp_path / "nnflash-agent" / "store")
    assert default_journal_path() == str(tmp_path / "nnflash-agent" / "journal.jsonl")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_store_dir().endswith(os.path.join(".cache", "nnflash-agent", "store"))


def test_hello_info_list_bye(agent):
    r = ask(agent, "hello")
    assert r["status"] == "ok" and r["result"]["protocol"] == P.PROTOCOL_VERSION
    assert "runtimes" in r["result"]["facts"]
    r = ask(agent, "info")
    assert set(r["result"]) == {"facts", "state"}
    assert ask(agent, "list")["result"] == {"artifacts": []}
    resp, stop = agent.handle_line(P.encode(P.make_request("bye", "z")))
    assert resp["status"] == "ok" and stop


@pytest.mark.parametrize(
    "verb, args, status",
    [
        ("hello", {"x": 1}, P.BAD_REQUEST),
        ("results", {}, P.BAD_REQUEST),
        ("results", {"ids": "abc"}, P.BAD_REQUEST),
        ("results", {"ids": [1]}, P.BAD_REQUEST),
        ("cleanup", {"sha256": "x"}, P.BAD_REQUEST),
        ("measure", {}, P.BAD_REQUEST),
        ("measure", {"artifact": {"sha256": SHA_A, "format": "onnx"}}, P.BAD_REQUEST),
        ("measure", {"artifact": "x", "runtime": "onnxruntime"}, P.BAD_REQUEST),
        ("measure", {"artifact": {"sha256": "xyz", "format": "onnx"}, "runtime": "onnxruntime"}, P.BAD_REQUEST),
        (
            "measure",
            {"artifact": {"sha256": "../" * 21 + "a", "format": "onnx"}, "runtime": "onnxruntime"},
            P.BAD_REQUEST,
        ),
        ("measure", {"artifact": {"sha256": SHA_A, "format": "exe"}, "runtime": "onnxruntime"}, P.BAD_REQUEST),
        ("measure", {"artifact": {"sha256": SHA_A, "format": "onnx"}, "runtime": "tvm"}, P.BAD_REQUEST),
        ("measure", {"artifact": {"sha256": SHA_A, "format": "onnx"}, "runtime": "tflite"}, P.BAD_REQUEST),
        (
            "measure",
            {"artifact": {"sha256": SHA_A, "format": "onnx"}, "runtime": "onnxruntime", "threads": "4"},
            P.BAD_REQUEST,
        ),
        (
            "measure",
            {"artifact": {"sha256": SHA_A, "format": "onnx"}, "runtime": "onnxruntime", "_test_fault": "kill"},
            P.BAD_REQUEST,
        ),
        ("measure", {"artifact": {"sha256": SHA_A, "format": "onnx"}, "runtime": "onnxruntime"}, P.MISSING_ARTIFACT),
    ],
)
def test_bad_requests(agent, verb, args, status):
    r = ask(agent, verb, args)
    assert r["status"] == status, r
    assert r["id"] == "r1" and r["error"] and r["result"] is None


def test_test_hooks_refused_without_env(agent):
    assert agent.allow_test_hooks is False


def test_corrupt_artifact(agent, tmp_path):
    sha = put(agent.store.root, b"model bytes", "onnx")
    with open(agent.store.path(sha, "onnx"), "ab") as f:
        f.write(b"tampered")
    r = ask(agent, "measure", {"artifact": {"sha256": sha, "format": "onnx"}, "runtime": "onnxruntime"})
    assert r["status"] == P.CORRUPT_ARTIFACT
    # failed measurements are journaled too
    assert agent.journal.lookup(["r1"])["r1"]["status"] == P.CORRUPT_ARTIFACT


def test_measure_in_process_and_journal(agent, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_onnx(tmp_path / "m.onnx")
    sha = put(agent.store.root, model.read_bytes(), "onnx")
    args = {
        "artifact": {"sha256": sha, "format": "onnx"},
        "runtime": "onnxruntime",
        "isolate": False,
        "repeat": 7,
        "min_repeat_ms": 1.0,
        "warmup_s": 0.0,
        "threads": 1,
        "energy": "estimate",
        "energy_idle_s": 0.1,
        "disturbed_share_max": None,  # about dispatch and the journal, not a quiet machine
    }
    r = ask(agent, "measure", args, rid="m-1")
    assert r["status"] == "ok", r
    res = r["result"]
    assert res["isolated"] is False and res["repeat"] == 7 and len(res["samples_ms"]) == 7
    assert res["inputs"] == [{"name": "x", "shape": [1, 16], "dtype": "float32"}]
    assert res["energy"]["estimated"] is True and res["energy"]["meter"] == "estimate"
    assert res["artifact"] == {"sha256": sha, "format": "onnx"}
    assert ask(agent, "list")["result"]["artifacts"][0]["sha256"] == sha
    got = ask(agent, "results", {"ids": ["m-1", "nope"]})["result"]["results"]
    assert got["nope"] is None and got["m-1"] == r
    assert ask(agent, "cleanup", {"sha256": [sha]})["result"] == {"removed": 1}
    assert ask(agent, "list")["result"]["artifacts"] == []


def test_serve_loop_with_streams(agent):
    lines = [
        b'{"v":2,"id":"a","verb":"hello"}\n',
        b"\n",
        b"{oops\n",
        b'{"v":2,"id":"b","verb":"list"}\n',
        b'{"v":2,"id":"c","verb":"bye"}\n',
        b'{"v":2,"id":"d","verb":"hello"}\n',
    ]
    out = io.BytesIO()
    assert serve(agent, io.BytesIO(b"".join(lines)), out) == 0
    resp = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["id"] for r in resp] == ["a", None, "b", "c"]
    assert [r["status"] for r in resp] == ["ok", "bad_json", "ok", "ok"]


def test_serve_overlong_line_is_refused_and_loop_continues(agent):
    big = b'{"v":2,"id":"x","verb":"hello","args":{"p":"' + b"a" * (P.MAX_LINE_BYTES + 10) + b'"}}\n'
    out = io.BytesIO()
    serve(agent, io.BytesIO(big + b'{"v":2,"id":"ok","verb":"hello"}\n'), out)
    resp = [json.loads(x) for x in out.getvalue().splitlines()]
    assert resp[0]["status"] in (P.BAD_REQUEST, P.BAD_JSON)
    assert resp[-1]["id"] == "ok" and resp[-1]["status"] == "ok"


def test_internal_errors_become_responses(agent, monkeypatch):
    def boom():
        raise RuntimeError("kaboom")

    monkeypatch.setattr(agent.store, "list", boom)
    r = ask(agent, "list")
    assert r["status"] == P.INTERNAL and "kaboom" in r["error"]
    assert ask(agent, "hello")["status"] == "ok"


# -- store / journal ------------------------------------------------------------------------------


def test_store_list_ignores_foreign_files(tmp_path):
    st = ArtifactStore(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / f"{SHA_A}.exe").write_text("x")
    sha = put(str(tmp_path), b"abc", "tflite")
    assert st.list() == [{"sha256": sha, "format": "tflite", "size": 3}]
    assert st.verified_path(sha, "tflite").endswith(f"{sha}.tflite")
    assert st.remove() == 1 and st.list() == []


def test_check_artifact_ref():
    assert check_artifact_ref({"sha256": SHA_A, "format": "onnx"}) == {
        "sha256": SHA_A,
        "format": "onnx",
    }
    for bad in (
        {"sha256": SHA_A.upper(), "format": "onnx"},
        {"sha256": SHA_A},
        [],
        {"sha256": SHA_A, "format": "onnx", "x": 1},
    ):
        with pytest.raises(P.ProtocolError):
            check_artifact_ref(bad)


def test_journal_latest_wins_and_torn_line(tmp_path):
    j = Journal(str(tmp_path / "sub" / "j.jsonl"))
    assert j.lookup(["a"]) == {"a": None}
    j.append("a", {"n": 1})
    j.append("b", {"n": 2})
    with open(j.path, "ab") as f:
        f.write(b'{"id": "a", "resp')  # torn write
    j.append("a", {"n": 3})
    assert j.lookup(["a", "b", "c"]) == {"a": {"n": 3}, "b": {"n": 2}, "c": None}
    assert list(j.lookup(["b", "a"])) == ["b", "a"]


# -- measure options ------------------------------------------------------------------------------


def test_parse_options_defaults():
    opts = parse_options({})
    for k, v in OPTION_DEFAULTS.items():
        if k != "energy_options":
            assert opts[k] == v
    assert opts["energy_options"] == {}


@pytest.mark.parametrize(
    "raw",
    [
        {"threads": 0},
        {"threads": True},
        {"threads": 1.5},
        {"repeat": 0},
        {"number": -1},
        {"min_repeat_ms": "50"},
        {"min_repeat_ms": float("nan")},
        {"warmup_s": -1},
        {"affinity": []},
        {"affinity": [0, "1"]},
        {"affinity": [-1]},
        {"energy": "wattmeter"},
        {"energy": 3},
        {"energy_options": [1]},
        {"energy": "estimate", "energy_options": {"volts": 5}},
        {"energy": "ina219", "energy_options": {"rate_hz": 0}},
        {"energy": "none", "energy_options": {"rate_hz": 10}},
        {"isolate": "yes"},
        {"timeout_s": 0},
        {"seed": -1},
        {"thermal_gate_c": "hot"},
        {"unknown_knob": 1},
        {"_test_fault": "kill"},
    ],
)
def test_parse_options_rejects(raw):
    with pytest.raises(P.ProtocolError) as ei:
        parse_options(raw)
    assert ei.value.status == P.BAD_REQUEST


def test_parse_options_test_hook_only_when_allowed():
    assert parse_options({"_test_fault": "kill"}, allow_test_hooks=True)["_test_fault"] == "kill"
    with pytest.raises(P.ProtocolError):
        parse_options({"_test_fault": "explode"}, allow_test_hooks=True)
