"""Transport without a network: host-key rules, request/response plumbing, artifact checks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import paramiko
import pytest

from nnflash.controller.errors import ExportError, HostKeyError, RequestTimeout, TransportError
from nnflash.controller.inventory import Device, local_device
from nnflash.controller.transport import (
    Connection,
    LocalConnection,
    SSHConnection,
    fingerprint,
    make_connection,
)
from nnflash.controller.transport.hostkeys import _Policy, load_host_keys
from nnflash_agent import protocol as P

# ---- host-key rules (the policy that paramiko calls for a key it does not know)


class _FakeClient:
    def __init__(self) -> None:
        self.keys = paramiko.HostKeys()

    def get_host_keys(self) -> paramiko.HostKeys:
        return self.keys


@pytest.fixture(scope="module")
def keys() -> Dict[str, Any]:
    return {"ecdsa": paramiko.ECDSAKey.generate(), "ecdsa2": paramiko.ECDSAKey.generate()}


def _conn(tmp_path: Path, accept: bool = False) -> SSHConnection:
    dev = Device(name="pi", host="10.1.2.3", port=2222)
    return SSHConnection(
        dev,
        known_hosts_path=tmp_path / "known_hosts",
        pinned_hosts_path=tmp_path / "cfg" / "known_hosts",
        accept_new_host_key=accept,
    )


def test_fingerprint_matches_openssh_format(keys: Dict[str, Any]) -> None:
    key = keys["ecdsa"]
    fp = fingerprint(key)
    raw = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    assert fp == "SHA256:" + raw


def test_unknown_host_refused_with_fingerprint_and_hint(tmp_path: Path, keys: Dict[str, Any]) -> None:
    conn = _conn(tmp_path)
    policy = _Policy(conn, paramiko.HostKeys(), paramiko.HostKeys())
    with pytest.raises(HostKeyError) as exc:
        policy.missing_host_key(_FakeClient(), "[10.1.2.3]:2222", keys["ecdsa"])
    msg = str(exc.value)
    assert "[10.1.2.3]:2222" in msg and fingerprint(keys["ecdsa"]) in msg
    assert "--accept-new-host-key" in msg and "unknown host key" in msg
    assert not (tmp_path / "cfg" / "known_hosts").exists()
    assert isinstance(exc.value, TransportError) and isinstance(exc.value, ConnectionError)


def test_accept_new_pins_key(tmp_path: Path, keys: Dict[str, Any]) -> None:
    conn = _conn(tmp_path, accept=True)
    client = _FakeClient()
    policy = _Policy(conn, paramiko.HostKeys(), paramiko.HostKeys())
    policy.missing_host_key(client, "[10.1.2.3]:2222", keys["ecdsa"])
    pinned = tmp_path / "cfg" / "known_hosts"
    assert pinned.stat().st_mode & 0o777 == 0o600
    loaded = paramiko.HostKeys(str(pinned))
    assert loaded.check("[10.1.2.3]:2222", keys["ecdsa"])
    assert client.keys.check("[10.1.2.3]:2222", keys["ecdsa"])
    assert conn.pinned_key == ("[10.1.2.3]:2222", keys["ecdsa"].get_name(), fingerprint(keys["ecdsa"]))
    # a second host is appended, the first kept
    policy.missing_host_key(client, "[10.9.9.9]:22", keys["ecdsa2"])
    assert len(pinned.read_text().splitlines()) == 2


def test_host_known_with_other_key_type_is_a_changed_key(tmp_path: Path, keys: Dict[str, Any]) -> None:
    # paramiko asks the policy when the host is known but not with the offered key type; nnflash
    # treats that as a changed key, even with accept-new.
    known = paramiko.HostKeys()
    rsa = paramiko.RSAKey.generate(1024)
    known.add("[10.1.2.3]:2222", rsa.get_name(), rsa)
    conn = _conn(tmp_path, accept=True)
    policy = _Policy(conn, known, paramiko.HostKeys())
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED") as exc:
        policy.missing_host_key(_FakeClient(), "[10.1.2.3]:2222", keys["ecdsa"])
    assert fingerprint(rsa) in str(exc.value) and fingerprint(keys["ecdsa"]) in str(exc.value)
    assert not (tmp_path / "cfg" / "known_hosts").exists()


def test_unreadable_known_hosts_is_a_host_key_error(tmp_path: Path) -> None:
    bad = tmp_path / "known_hosts"
    bad.mkdir()  # a directory: cannot be read as a file
    # a directory is skipped (not a file); an unparsable line is skipped by paramiko
    assert load_host_keys(bad).keys() == []


# ---- connection plumbing, with an in-memory agent


class _PipeConnection(Connection):
    """A Connection whose 'agent' is a thread answering over os pipes."""

    def __init__(self, handler: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]) -> None:
        super().__init__(Device(name="mem", kind="local"), hello_timeout_s=5.0)
        self.handler = handler
        self.store = "/nonexistent/store"
        self.starts = 0

    def _start(self) -> None:
        self.starts += 1
        c2a_r, self._c2a_w = os.pipe()
        a2c_r, a2c_w = os.pipe()
        self._a2c_r = a2c_r
        self._agent_w = a2c_w

        def agent() -> None:
            with os.fdopen(c2a_r, "rb") as inp, os.fdopen(a2c_w, "wb", buffering=0) as out:
                for line in inp:
                    msg = json.loads(line)
                    if msg["verb"] == "hello":
                        resp = P.make_response(
                            msg["id"],
                            result={"protocol": P.PROTOCOL_VERSION, "store_dir": self.store},
                        )
                    else:
                        resp = self.handler(msg)
                    if resp == "drop":
                        return
                    if resp is not None:
                        out.write(b"noise that is not json\n")
                        out.write(P.encode(resp))

        self._agent = threading.Thread(target=agent, daemon=True)
        self._agent.start()
        self._start_reader(lambda: os.read(a2c_r, 65536), "out")

    def _write(self, data: bytes) -> None:
        os.write(self._c2a_w, data)

    def _close_stream(self, graceful: bool) -> None:
        if not self.starts:
            return
        for fd in (self._c2a_w,):
            try:
                os.close(fd)
            except OSError:
                pass
        self._agent.join(2)
        try:
            os.close(self._a2c_r)
        except OSError:
            pass

    # files: local paths, like LocalConnection
    _remote_size = LocalConnection._remote_size
    _remote_sha256 = LocalConnection._remote_sha256
    _remote_mkdirs = LocalConnection._remote_mkdirs
    _upload = LocalConnection._upload
    _remote_rename = LocalConnection._remote_rename
    _remote_remove_quiet = LocalConnection._remote_remove_quiet


def _echo(msg: Dict[str, Any]) -> Dict[str, Any]:
    args = msg.get("args") or {}
    if "sleep_s" in args:
        time.sleep(args["sleep_s"])
    return P.make_response(msg["id"], result={"echo": args})


def test_request_roundtrip_and_ids() -> None:
    with _PipeConnection(_echo) as conn:
        assert conn.alive and conn.store_dir == "/nonexistent/store"
        r1 = conn.request("info", {"a": 1})
        r2 = conn.request("info", {"a": 2}, request_id="mine-7")
        assert r1["result"]["echo"] == {"a": 1} and r2["id"] == "mine-7"
        assert r1["id"] != r2["id"]
    assert not conn.alive


def test_concurrent_requests_matched_by_id() -> None:
    # the agent answers out of order: the slow request must still get its own answer
    def handler(msg: Dict[str, Any]) -> Dict[str, Any]:
        return _echo(msg)

    with _PipeConnection(handler) as conn:
        out: List[Dict[str, Any]] = []

        def one(i: int) -> None:
            out.append(conn.request("info", {"i": i}))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r["result"]["echo"]["i"] for r in out) == list(range(20))


def test_request_timeout_keeps_connection_usable() -> None:
    with _PipeConnection(_echo) as conn:
        with pytest.raises(RequestTimeout) as exc:
            conn.request("info", {"sleep_s": 0.5}, timeout_s=0.1, request_id="slow-1")
        assert exc.value.request_id == "slow-1"
        assert isinstance(exc.value, TimeoutError) and isinstance(exc.value, TransportError)
        time.sleep(0.5)  # the late answer is dropped
        assert conn.request("info", {"x": 1})["result"]["echo"] == {"x": 1}


def test_drop_fails_pending_request_and_reopen_works() -> None:
    def handler(msg: Dict[str, Any]) -> Any:
        return "drop" if msg["args"].get("drop") else _echo(msg)

    conn = _PipeConnection(handler)
    conn.open()
    t0 = time.monotonic()
    with pytest.raises(TransportError) as exc:
        conn.request("measure", {"drop": True}, timeout_s=30, request_id="m-1")
    assert time.monotonic() - t0 < 5
    assert exc.value.request_id == "m-1" and not isinstance(exc.value, RequestTimeout)
    assert not conn.alive
    with pytest.raises(TransportError, match="not connected"):
        conn.request("info")
    conn.open()  # reconnect
    assert conn.starts == 2 and conn.request("info")["status"] == "ok"
    conn.close()
    conn.close()  # twice is fine


def test_error_status_is_returned_not_raised() -> None:
    def handler(msg: Dict[str, Any]) -> Dict[str, Any]:
        return P.make_response(msg["id"], P.RUNTIME_ERROR, None, "model refused")

    with _PipeConnection(handler) as conn:
        r = conn.request("measure", {})
        assert r["status"] == "runtime_error" and r["error"] == "model refused"


def test_hello_version_mismatch_is_clear() -> None:
    class Old(_PipeConnection):
        def _check_hello(self, response: Dict[str, Any]) -> Dict[str, Any]:
            response = dict(response, result={"protocol": 99, "store_dir": "/x"})
            return super()._check_hello(response)

    conn = Old(_echo)
    with pytest.raises(TransportError, match="v99.*v2"):
        conn.open()
    assert not conn.alive


def test_put_artifact_local_semantics(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    art = tmp_path / "m.onnx"
    art.write_bytes(b"model bytes" * 100)
    sha = hashlib.sha256(art.read_bytes()).hexdigest()
    with _PipeConnection(_echo) as conn:
        conn.hello = dict(conn.hello or {}, store_dir=str(store))
        put = conn.put_artifact(art, sha, "onnx")
        assert put.uploaded and Path(put.remote_path) == store / f"{sha}.onnx"
        assert (store / f"{sha}.onnx").read_bytes() == art.read_bytes()
        assert not conn.put_artifact(art, sha, "onnx").uploaded  # skipped
        # same size, wrong content: skipped by default, replaced with verify_existing
        (store / f"{sha}.onnx").write_bytes(b"X" * art.stat().st_size)
        assert not conn.put_artifact(art, sha, "onnx").uploaded
        assert conn.put_artifact(art, sha, "onnx", verify_existing=True).uploaded
        assert (store / f"{sha}.onnx").read_bytes() == art.read_bytes()
        assert list((store / ".incoming").iterdir()) == []
        with pytest.raises(ExportError, match="re-export"):
            conn.put_artifact(art, "0" * 64, "onnx")
        with pytest.raises(ValueError):
            conn.put_artifact(art, sha.upper(), "onnx")
        with pytest.raises(ValueError):
            conn.put_artifact(art, sha, "../x")
        with pytest.raises(ExportError):
            conn.put_artifact(tmp_path / "missing.onnx", sha, "onnx")


def test_put_artifact_corrupt_copy_detected(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    art = tmp_path / "m.onnx"
    art.write_bytes(b"abc" * 1000)
    sha = hashlib.sha256(art.read_bytes()).hexdigest()

    class Corrupting(_PipeConnection):
        def _upload(self, local: Path, remote: str) -> None:
            Path(remote).write_bytes(b"garbage")

    with Corrupting(_echo) as conn:
        conn.hello = dict(conn.hello or {}, store_dir=str(store))
        with pytest.raises(TransportError, match="corrupt"):
            conn.put_artifact(art, sha, "onnx")
    assert not (store / f"{sha}.onnx").exists()
    assert list((store / ".incoming").iterdir()) == []


# ---- factory


def test_make_connection_picks_kind(tmp_path: Path) -> None:
    local = make_connection(local_device(), store_dir=tmp_path, accept_new_host_key=True)
    assert isinstance(local, LocalConnection) and local.argv[-2:] == ["--store", str(tmp_path)]
    ssh = make_connection(Device(name="pi", host="h"), store_dir=tmp_path, known_hosts_path=tmp_path / "kh")
    assert isinstance(ssh, SSHConnection) and ssh.known_hosts_path == tmp_path / "kh"
    with pytest.raises(TransportError):
        SSHConnection(local_device())


def test_ssh_retries_with_bounded_backoff(tmp_path: Path) -> None:
    sleeps: List[float] = []
    dev = Device(name="pi", host="127.0.0.1", port=1)  # nothing listens on port 1
    conn = SSHConnection(
        dev,
        known_hosts_path=tmp_path / "kh",
        pinned_hosts_path=tmp_path / "pin",
        retries=5,
        backoff_s=0.5,
        backoff_max_s=2.0,
        connect_timeout_s=1.0,
        look_for_keys=False,
        allow_agent=False,
        sleep=sleeps.append,
    )
    with pytest.raises(TransportError, match="after 6 attempt") as exc:
        conn.open()
    assert not isinstance(exc.value, HostKeyError)
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert conn.connect_attempts == 6


# ---- the device-side sha256 helper (run here with a local shell)


@pytest.mark.parametrize("coreutils", [True, False])
def test_hasher_loop(tmp_path: Path, coreutils: bool) -> None:
    import shutil
    import subprocess

    from nnflash.controller.transport.ssh import _HASHER_LOOP

    a = tmp_path / "a b.bin"
    a.write_bytes(b"hello")
    env = dict(os.environ)
    if not coreutils:  # a PATH with sh and python3 but no sha256sum
        bindir = tmp_path / "bin"
        bindir.mkdir()
        for tool in ("sh", "python3"):
            found = shutil.which(tool, path="/usr/bin:/bin") or shutil.which(tool)
            if found is None:
                pytest.skip(f"{tool} not found")
            (bindir / tool).symlink_to(found)
        env["PATH"] = str(bindir)
    out = subprocess.run(
        ["/bin/sh", "-c", _HASHER_LOOP],
        input=f"{a}\n{tmp_path / 'missing'}\n{a}\n".encode(),
        capture_output=True,
        env=env,
        check=True,
    ).stdout.decode()
    want = hashlib.sha256(b"hello").hexdigest()
    assert out.splitlines() == [want, "", want]
