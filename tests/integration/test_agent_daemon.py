"""The long-running agent: ``serve --socket`` and the ``connect`` bridge, as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

HELLO = b'{"v":2,"id":"h1","verb":"hello"}\n'


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def _agent(*args: str, env: dict, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnflash_agent.cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def _start_daemon(sock: Path, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnflash_agent.cli", "serve", "--socket", str(sock)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # the daemon says so once it listens
    assert "listening on" in line, line + proc.stderr.read().decode()
    assert sock.exists()
    return proc


def _responses(out: bytes) -> list:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_sessions_are_served_one_after_another_by_one_process(tmp_path):
    env = _env(tmp_path)
    sock = tmp_path / "run" / "agent.sock"
    proc = _start_daemon(sock, env)
    try:
        assert (sock.stat().st_mode & 0o777) == 0o600
        assert (sock.parent.stat().st_mode & 0o777) == 0o700
        first = _agent("connect", "--socket", str(sock), stdin=HELLO + b'{"v":2,"id":"l1","verb":"list"}\n', env=env)
        assert first.returncode == 0, first.stderr
        r = _responses(first.stdout)
        assert [x["id"] for x in r] == ["h1", "l1"] and all(x["status"] == "ok" for x in r)
        # bad input in one session does not end the daemon
        bad = _agent("connect", "--socket", str(sock), stdin=b"{not json\n" + HELLO, env=env)
        assert [x["status"] for x in _responses(bad.stdout)] == ["bad_json", "ok"]
        again = _agent("connect", "--socket", str(sock), stdin=b'{"v":2,"id":"b","verb":"bye"}\n' + HELLO, env=env)
        assert [x["id"] for x in _responses(again.stdout)] == ["b"]  # bye ends the session ...
        assert proc.poll() is None  # ... not the daemon
        third = _agent("connect", "--socket", str(sock), stdin=HELLO, env=env)
        assert _responses(third.stdout)[0]["result"]["agent_version"]
        # a second daemon on the same socket is refused with one line
        dup = _agent("serve", "--socket", str(sock), env=env)
        assert dup.returncode == 2 and b"already serving" in dup.stderr
        assert len(dup.stderr.decode().strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert not sock.exists()  # the socket is removed on the way out


def test_connect_without_a_daemon(tmp_path):
    env = _env(tmp_path)
    missing = tmp_path / "none.sock"
    p = _agent("connect", "--socket", str(missing), stdin=HELLO, env=env)
    assert p.returncode == 2 and b"no long-running agent" in p.stderr and p.stdout == b""
    p = _agent("connect", "--socket", str(missing), "--fallback", stdin=HELLO, env=env)
    assert p.returncode == 0 and _responses(p.stdout)[0]["status"] == "ok"
    assert b"serving on demand" in p.stderr


def test_stale_socket_is_replaced_and_non_socket_refused(tmp_path):
    env = _env(tmp_path)
    sock = tmp_path / "run" / "agent.sock"
    sock.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # a socket file nobody listens on, as a crashed daemon leaves it
    proc = _start_daemon(sock, env)
    try:
        p = _agent("connect", "--socket", str(sock), stdin=HELLO, env=env)
        assert _responses(p.stdout)[0]["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    plain = tmp_path / "run" / "not-a-socket"
    plain.write_text("data")
    p = _agent("serve", "--socket", str(plain), env=env)
    assert p.returncode == 2 and b"not a socket" in p.stderr and plain.read_text() == "data"
