"""No path escapes the agent's artifact store (issue 12, section 2).

Artifact references and cleanup lists with ``..``, absolute paths, separators and NUL bytes are
refused before they reach the file system; symbolic links (and other non-regular files) placed in
the store under an artifact's name are never followed, listed, hashed or measured. The agent runs
only its protocol's verbs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnflash_agent import protocol as P
from nnflash_agent.serve import Agent
from nnflash_agent.store import ArtifactStore

FUZZ = settings(
    max_examples=120,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
HOSTILE_NAMES = [
    "..",
    "../" * 8 + "etc/passwd",
    "/etc/passwd",
    "a" * 63 + "/",
    "a" * 64 + "\x00",
    "\x00" + "a" * 63,
    "a" * 32 + "/../" + "a" * 28,
    "A" * 64,
    "a" * 65,
    "~/" + "a" * 62,
    "a" * 64 + ".onnx",
]


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(str(tmp_path / "store"), str(tmp_path / "journal.jsonl"), allow_test_hooks=False)


def ask(agent: Agent, verb: str, args: dict, rid: str = "r") -> dict:
    response, _ = agent.handle_line(P.encode(P.make_request(verb, rid, args)))
    return response


def measure(agent: Agent, sha: object, fmt: object = "onnx") -> dict:
    return ask(agent, "measure", {"artifact": {"sha256": sha, "format": fmt}, "runtime": "onnxruntime"})


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_artifact_names_are_refused(agent: Agent, name: str) -> None:
    assert measure(agent, name)["status"] == P.BAD_REQUEST
    for fmt in ("../onnx", "onnx/../../x", "/onnx", "onnx\x00", ""):
        assert measure(agent, "a" * 64, fmt)["status"] == P.BAD_REQUEST
    with pytest.raises(P.ProtocolError):
        agent.store.path(name, "onnx")


@FUZZ
@given(sha=st.text(max_size=80), fmt=st.text(max_size=10))
def test_any_reference_stays_in_the_store(agent: Agent, sha: str, fmt: str) -> None:
    """Every reference either is refused or names a file directly inside the store."""
    try:
        path = agent.store.path(sha, fmt)
    except P.ProtocolError as exc:
        assert exc.status == P.BAD_REQUEST
        assert measure(agent, sha, fmt)["status"] == P.BAD_REQUEST
        return
    assert os.path.dirname(path) == agent.store.root
    assert "\x00" not in path and os.path.basename(path) == f"{sha}.{fmt}"


def test_cleanup_of_hostile_names_removes_nothing_outside(agent: Agent, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"keep me")
    names = HOSTILE_NAMES + [str(outside), "../outside", "*"]
    assert ask(agent, "cleanup", {"sha256": names})["result"] == {"removed": 0}
    assert outside.read_bytes() == b"keep me"
    assert ask(agent, "cleanup", {"sha256": ["x\x00"]})["status"] == P.OK


def test_symlink_in_the_store_is_never_followed(agent: Agent, tmp_path: Path) -> None:
    """A link named like an artifact, pointing at a file whose hash matches the name: refused for
    measure, not listed, and cleanup removes the link, never its target."""
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"not yours")
    sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    link = Path(agent.store.root) / f"{sha}.onnx"
    link.symlink_to(secret)
    r = measure(agent, sha)
    assert r["status"] == P.CORRUPT_ARTIFACT and "symbolic link" in r["error"], r
    assert ask(agent, "list", {})["result"]["artifacts"] == []
    assert ask(agent, "cleanup", {})["result"] == {"removed": 0}
    assert secret.read_bytes() == b"not yours"
    # a link to a directory, and a dangling one, are refused too
    for target in (tmp_path, tmp_path / "nowhere"):
        link.unlink()
        link.symlink_to(target)
        assert measure(agent, sha)["status"] == P.CORRUPT_ARTIFACT


def test_fifo_and_directory_in_the_store_are_refused_without_blocking(agent: Agent) -> None:
    sha = "b" * 64
    os.mkfifo(os.path.join(agent.store.root, f"{sha}.onnx"))  # opening it for reading would block
    assert measure(agent, sha)["status"] == P.CORRUPT_ARTIFACT
    os.mkdir(os.path.join(agent.store.root, f"{sha}.tflite"))
    r = ask(agent, "measure", {"artifact": {"sha256": sha, "format": "tflite"}, "runtime": "tflite"})
    assert r["status"] == P.CORRUPT_ARTIFACT
    assert ask(agent, "list", {})["result"]["artifacts"] == []


def test_store_reads_only_regular_files(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "s"))
    store.ensure()
    data = b"model"
    sha = hashlib.sha256(data).hexdigest()
    Path(store.path(sha, "onnx")).write_bytes(data)
    assert store.verified_path(sha, "onnx") == os.path.join(store.root, f"{sha}.onnx")
    assert store.list() == [{"sha256": sha, "format": "onnx", "size": len(data)}]


@pytest.mark.parametrize("verb", ["exec", "shell", "eval", "upload", "put", "download", "get", "import", "HELLO"])
def test_only_protocol_verbs_run(agent: Agent, verb: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    r = ask(agent, verb, {"cmd": f"touch {marker}", "path": str(marker), "code": "1"})
    assert r["status"] == P.UNKNOWN_VERB and not marker.exists()
    assert set(P.VERBS) == {"hello", "info", "measure", "list", "results", "cleanup", "bye"}
