"""SSH transport against a real OpenSSH server on loopback (see sshd_fixture.py).

Host-key rules, SFTP upload (content addressed, skip, verify, corruption), connection drops and
reconnect with journal fetch, retries, key-only authentication; the real agent over SSH when
``agent/cli.py`` is present.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshd_fixture import (  # noqa: E402
    REPO_ROOT,
    SSHServer,
    fake_agent_command,
    keygen,
    real_agent_available,
    real_agent_command,
    sshd,
)

from nnflash.controller.errors import HostKeyError, TransportError  # noqa: E402
from nnflash.controller.inventory import Device  # noqa: E402
from nnflash.controller.transport import SSHConnection  # noqa: E402

pytestmark = pytest.mark.integration
__all__ = ["sshd"]  # the fixture, imported above


def _device(server: SSHServer, agent_command: str, key: Optional[Path] = None) -> Device:
    return Device(
        name="loop",
        host="127.0.0.1",
        port=server.port,
        user="root" if _is_root() else None,
        key_file=str(key or server.client_key),
        agent_command=agent_command,
    )


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _conn(server: SSHServer, tmp_path: Path, accept: bool = False, **kw: Any) -> SSHConnection:
    agent = kw.pop("agent_command", None) or fake_agent_command(tmp_path, tmp_path / "store")
    key = kw.pop("key", None)
    opts: Dict[str, Any] = dict(
        known_hosts_path=tmp_path / "user_known_hosts",
        pinned_hosts_path=tmp_path / "cfg" / "known_hosts",
        accept_new_host_key=accept,
        look_for_keys=False,
        allow_agent=False,
        connect_timeout_s=5.0,
        retries=0,
    )
    opts.update(kw)
    return SSHConnection(_device(server, agent, key), **opts)


def _artifact(tmp_path: Path, size: int = 200_000, name: str = "m.onnx") -> tuple:
    path = tmp_path / name
    path.write_bytes(hashlib.sha256(name.encode()).digest() * (size // 32))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


# ---- host keys


def test_unknown_host_refused_then_accept_new_pins(sshd: SSHServer, tmp_path: Path) -> None:
    with pytest.raises(HostKeyError) as exc:
        _conn(sshd, tmp_path).open()
    msg = str(exc.value)
    assert sshd.hostkey_name in msg
    assert sshd.host_key_fingerprint in msg  # the same fingerprint ssh-keygen -l prints
    assert "--accept-new-host-key" in msg
    pinned = tmp_path / "cfg" / "known_hosts"
    assert not pinned.exists()

    conn = _conn(sshd, tmp_path, accept=True)
    hello = conn.open()
    assert hello["store_dir"] == str(tmp_path / "store")
    assert conn.pinned_key is not None and conn.pinned_key[2] == sshd.host_key_fingerprint
    conn.close()
    assert pinned.read_text().startswith(sshd.hostkey_name + " ssh-ed25519 ")

    # pinned: a later connection without accept-new works and pins nothing new
    conn = _conn(sshd, tmp_path)
    conn.open()
    assert conn.pinned_key is None
    conn.close()
    assert len(pinned.read_text().splitlines()) == 1


def test_user_known_hosts_is_honoured_and_never_written(sshd: SSHServer, tmp_path: Path) -> None:
    pub = sshd.host_key.with_suffix(".pub").read_text().split()
    user_kh = tmp_path / "user_known_hosts"
    user_kh.write_text(f"{sshd.hostkey_name} {pub[0]} {pub[1]}\n")
    before = user_kh.read_text()
    with _conn(sshd, tmp_path) as conn:
        assert conn.request("info")["status"] == "ok"
    assert user_kh.read_text() == before
    assert not (tmp_path / "cfg" / "known_hosts").exists()


def test_changed_host_key_refused_even_with_accept_new(sshd: SSHServer, tmp_path: Path) -> None:
    _conn(sshd, tmp_path, accept=True).open()
    old_fp = sshd.host_key_fingerprint
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    new_fp = sshd.host_key_fingerprint
    assert new_fp != old_fp
    for accept in (False, True):
        with pytest.raises(HostKeyError) as exc:
            _conn(sshd, tmp_path, accept=accept).open()
        msg = str(exc.value)
        assert "HOST KEY CHANGED" in msg and sshd.hostkey_name in msg
        assert old_fp in msg and new_fp in msg
        assert "ssh-keygen -R" in msg
    pinned = (tmp_path / "cfg" / "known_hosts").read_text().splitlines()
    assert len(pinned) == 1  # the old key is still the only one pinned


# ---- authentication


def test_wrong_key_is_refused_without_retry(sshd: SSHServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_key")
    sleeps: list = []
    conn = _conn(sshd, tmp_path, accept=True, key=other, retries=3, sleep=sleeps.append)
    with pytest.raises(TransportError, match="authentication failed.*key authentication only"):
        conn.open()
    assert sleeps == [] and conn.connect_attempts == 1


def test_retries_until_server_is_back(sshd: SSHServer, tmp_path: Path) -> None:
    _conn(sshd, tmp_path, accept=True).open()
    sshd.stop()
    timer = threading.Timer(0.8, sshd.start)
    timer.start()
    try:
        conn = _conn(sshd, tmp_path, retries=6, backoff_s=0.2, backoff_max_s=1.0)
        conn.open()
        assert conn.connect_attempts > 1
        conn.close()
    finally:
        timer.join()


# ---- SFTP artifacts


def test_upload_content_addressed_skip_and_verify(sshd: SSHServer, tmp_path: Path) -> None:
    path, sha = _artifact(tmp_path)
    store = tmp_path / "store"
    with _conn(sshd, tmp_path, accept=True) as conn:
        put = conn.put_artifact(path, sha, "onnx")
        assert put.uploaded and put.remote_path == f"{store}/{sha}.onnx"
        assert (store / f"{sha}.onnx").read_bytes() == path.read_bytes()
        listed = conn.request("list")["result"]["artifacts"]
        assert {"sha256": sha, "format": "onnx", "size": path.stat().st_size} in listed
        again = conn.put_artifact(path, sha, "onnx")
        assert not again.uploaded
        # a damaged file of the right size: skipped by size, caught by verify_existing
        (store / f"{sha}.onnx").write_bytes(b"\0" * path.stat().st_size)
        meas = conn.request("measure", {"artifact": {"sha256": sha, "format": "onnx"}})
        assert meas["status"] == "corrupt_artifact"
        assert not conn.put_artifact(path, sha, "onnx").uploaded
        assert conn.put_artifact(path, sha, "onnx", verify_existing=True).uploaded
        assert (store / f"{sha}.onnx").read_bytes() == path.read_bytes()
        meas = conn.request("measure", {"artifact": {"sha256": sha, "format": "onnx"}})
        assert meas["status"] == "ok"
        assert list((store / ".incoming").iterdir()) == []


def test_corrupt_upload_detected(sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sha = _artifact(tmp_path)
    store = tmp_path / "store"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\xff" * path.stat().st_size)
    calls = []
    real_upload = SSHConnection._upload

    def corrupt_upload(self: SSHConnection, local: Path, remote: str) -> None:
        calls.append(remote)
        real_upload(self, bad, remote)  # the bytes change in flight

    with _conn(sshd, tmp_path, accept=True) as conn:
        monkeypatch.setattr(SSHConnection, "_upload", corrupt_upload)
        with pytest.raises(TransportError, match="corrupt.*tried twice"):
            conn.put_artifact(path, sha, "onnx")
        assert len(calls) == 2
        assert not (store / f"{sha}.onnx").exists()
        assert list((store / ".incoming").iterdir()) == []
        # with a healthy link the next upload works on the same connection
        monkeypatch.setattr(SSHConnection, "_upload", real_upload)
        assert conn.put_artifact(path, sha, "onnx").uploaded


# ---- connection drops


def test_drop_mid_request_then_reconnect_and_fetch_journal(sshd: SSHServer, tmp_path: Path) -> None:
    path, sha = _artifact(tmp_path)
    conn = _conn(sshd, tmp_path, accept=True)
    conn.open()
    conn.put_artifact(path, sha, "onnx")
    errors: list = []

    def slow_measure() -> None:
        try:
            conn.request(
                "measure",
                {"artifact": {"sha256": sha, "format": "onnx"}, "sleep_s": 1.0},
                timeout_s=30,
                request_id="campaign-1-spec-a",
            )
        except TransportError as exc:
            errors.append(exc)

    t = threading.Thread(target=slow_measure)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    sshd.stop()  # listener and session processes killed: the agent keeps running orphaned
    t.join(15)
    assert not t.is_alive() and time.monotonic() - t0 < 10
    assert len(errors) == 1 and errors[0].request_id == "campaign-1-spec-a"
    assert not conn.alive
    with pytest.raises(TransportError):
        conn.open()  # server down: refused (retries=0)

    sshd.start()
    time.sleep(1.5)  # the orphaned agent finishes and journals its answer
    conn.open()  # reconnect: a new agent, same journal
    found = conn.results(["campaign-1-spec-a", "never-sent"])
    assert found["never-sent"] is None
    assert found["campaign-1-spec-a"]["status"] == "ok"
    assert conn.put_artifact(path, sha, "onnx").uploaded is False
    conn.close()


def test_agent_exit_surfaces_as_transport_error(sshd: SSHServer, tmp_path: Path) -> None:
    cmd = "echo nnflash-agent: not installed >&2; exit 127"
    with pytest.raises(TransportError, match="exited with status 127.*not installed"):
        _conn(sshd, tmp_path, accept=True, agent_command=cmd, hello_timeout_s=10).open()


def test_exec_and_sftp_with_trivial_command(sshd: SSHServer, tmp_path: Path) -> None:
    # exec channel + SFTP work independently of the agent
    conn = _conn(sshd, tmp_path, accept=True)
    conn.open()
    assert conn.exec("echo hello-from-sshd").strip() == "hello-from-sshd"
    f = tmp_path / "x.txt"
    f.write_text("abc")
    assert conn._remote_sha256(str(f)) == hashlib.sha256(b"abc").hexdigest()
    assert conn._remote_size(str(f)) == 3 and conn._remote_size(str(tmp_path / "none")) is None
    conn.close()


# ---- the real agent behind sshd


@pytest.mark.skipif(not real_agent_available(), reason="agent/cli.py not present yet")
def test_real_agent_over_ssh(sshd: SSHServer, tmp_path: Path) -> None:
    store = tmp_path / "real-store"
    cmd = real_agent_command(store) + f" --journal {tmp_path / 'journal.jsonl'}"
    with _conn(sshd, tmp_path, accept=True, agent_command=cmd) as conn:
        assert conn.hello is not None and conn.hello["protocol"] == 2
        assert conn.store_dir == str(store)
        assert "machine" in conn.facts
        model = REPO_ROOT / "agent" / "data" / "selftest.onnx"
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        assert conn.put_artifact(model, sha, "onnx").uploaded
        listed = conn.request("list")["result"]["artifacts"]
        assert [a["sha256"] for a in listed] == [sha]
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return
        args = {
            "artifact": {"sha256": sha, "format": "onnx"},
            "runtime": "onnxruntime",
            "repeat": 3,
            "warmup_runs": 1,
            "warmup_s": 0.0,
            "min_repeat_ms": 1.0,
            "disturbed_share_max": None,  # this test is about the transport, not a quiet machine
        }
        r = conn.request("measure", args, timeout_s=120, request_id="real-1")
        assert r["status"] == "ok", r["error"]
        assert r["result"]["latency_ms_median"] > 0
        assert conn.results(["real-1"])["real-1"]["status"] == "ok"


# ---- several sessions at once, devices check


def test_eight_agents_behind_one_server(sshd: SSHServer, tmp_path: Path) -> None:
    _conn(sshd, tmp_path, accept=True).open()  # pin once
    path, sha = _artifact(tmp_path)
    results: Dict[int, Any] = {}
    errors: list = []

    # written once, before the threads start (rewriting it while an agent starts would race)
    commands = [fake_agent_command(tmp_path, tmp_path / f"store{k}") for k in range(8)]

    def worker(k: int) -> None:
        try:
            conn = _conn(sshd, tmp_path / f"w{k}", agent_command=commands[k])
            conn.known_hosts_path = tmp_path / "user_known_hosts"
            conn.pinned_hosts_path = tmp_path / "cfg" / "known_hosts"
            with conn:
                conn.put_artifact(path, sha, "onnx")
                args = {"artifact": {"sha256": sha, "format": "onnx"}, "sleep_s": 0.2}
                results[k] = conn.request("measure", args, timeout_s=30)["status"]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    for k in range(8):
        (tmp_path / f"w{k}").mkdir()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == {k: "ok" for k in range(8)}


def test_probe(sshd: SSHServer, tmp_path: Path) -> None:
    from nnflash.controller.transport import probe

    dev = _device(sshd, fake_agent_command(tmp_path, tmp_path / "store"))
    info = probe(
        dev,
        known_hosts_path=tmp_path / "kh",
        pinned_hosts_path=tmp_path / "pinned",
        accept_new_host_key=True,
        look_for_keys=False,
        allow_agent=False,
        store_dir="ignored for ssh devices",
    )
    assert info["device"] == "loop" and info["protocol"] == 2
    assert info["facts"]["agent"] == "fake" and info["rtt_ms"] > 0
    assert info["pinned_host_key"]["fingerprint"] == sshd.host_key_fingerprint
    again = probe(
        dev,
        known_hosts_path=tmp_path / "kh",
        pinned_hosts_path=tmp_path / "pinned",
        look_for_keys=False,
        allow_agent=False,
    )
    assert again["pinned_host_key"] is None


def test_agent_that_never_answers(sshd: SSHServer, tmp_path: Path) -> None:
    conn = _conn(sshd, tmp_path, accept=True, agent_command="sleep 30", hello_timeout_s=1.0)
    with pytest.raises(TransportError, match="did not answer hello within 1 s.*sleep 30"):
        conn.open()
    assert not conn.alive
