"""The emulated Raspberry-Pi-like aarch64 host itself (see emuhost.py): reachable over real SSH,
arm64 userland with Python 3.11 and glibc 2.36, working /proc, and no way out to a package index.

The first run builds the rootfs (several minutes, cached afterwards); starting the host takes a
few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emuhost import EmuHost, emu_host_fixture, skip_reason  # noqa: E402,F401  (fixture "emu_host")

pytestmark = [pytest.mark.emulated, pytest.mark.slow]


def run(host: EmuHost, cmd: str, timeout: float = 300.0) -> str:
    r = host.exec(cmd, timeout=timeout)
    assert r.returncode == 0, f"{cmd!r} failed (rc {r.returncode}): {r.stdout}{r.stderr}"
    return r.stdout


def test_machine_is_aarch64(emu_host: EmuHost) -> None:
    out = run(emu_host, "uname -m; hostname; id -un; id -Gn").split()
    assert out[0] == "aarch64"
    assert out[1] == "raspberrypi"
    assert out[2] == "pi"
    assert {"video", "i2c"} <= set(out[3:])


def test_python_is_311(emu_host: EmuHost) -> None:
    out = run(emu_host, "python3 --version")
    assert re.fullmatch(r"Python 3\.11\.\d+\s*", out), out


def test_glibc_236(emu_host: EmuHost) -> None:
    out = run(emu_host, "ldd --version | head -n1; /lib/ld-linux-aarch64.so.1 --version | head -n1")
    assert "2.36" in out.splitlines()[0], out
    assert "2.36" in out.splitlines()[1], out


def test_venv_works(emu_host: EmuHost) -> None:
    out = run(
        emu_host,
        "python3 -m venv /tmp/v && /tmp/v/bin/python -c "
        "'import ctypes, os, sys; print(sys.platform, os.cpu_count(), ctypes.sizeof(ctypes.c_void_p))'",
    )
    platform_, ncpu, ptr = out.split()
    assert platform_ == "linux"
    assert int(ncpu) >= 1
    assert ptr == "8"


def test_proc_is_readable(emu_host: EmuHost) -> None:
    out = run(
        emu_host,
        "python3 -c 'import os; "
        'print(open("/proc/cpuinfo").read()); print(open("/proc/meminfo").read()); '
        'print("PIDS", len([p for p in os.listdir("/proc") if p.isdigit()]))\'',
    )
    assert "processor" in out
    assert re.search(r"^MemTotal:\s+\d+ kB", out, re.M), out
    assert int(out.split("PIDS")[1].split()[0]) >= 2  # the session's sshd and python at least
    if os.uname().machine != "aarch64":  # emulated: a Pi 3B style cpuinfo, not the host's
        assert re.search(r"^CPU implementer\s*: 0x41", out, re.M), out
        assert "Raspberry Pi" in out


def test_no_default_route(emu_host: EmuHost) -> None:
    out = run(emu_host, "cat /proc/net/route")
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    assert rows, out  # the link's own subnet is there
    assert all(row[1] != "00000000" for row in rows), f"default route inside the emulated host:\n{out}"


@pytest.mark.parametrize("index", ["local-closed-port", "default"])
def test_pip_install_fails_fast(emu_host: EmuHost, index: str) -> None:
    # port 9 of this machine's end of the link: nothing listens; the default index (pypi.org):
    # no nameserver and no route, so it fails before any packet leaves this machine
    opt = f"--index-url http://{emu_host.host_ip}:9/simple" if index != "default" else ""
    cmd = f"python3 -m pip install --user --break-system-packages --no-cache-dir --retries 0 --timeout 5 {opt} six"
    t0 = time.monotonic()
    r = emu_host.exec(cmd, timeout=120)
    elapsed = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "externally-managed" not in out, out  # it failed on the network, not on PEP 668
    assert re.search(r"No matching distribution|Could not find a version|Failed to establish", out), out
    assert elapsed < 90, f"pip took {elapsed:.0f} s to fail"
    assert "six" not in run(emu_host, "ls ~/.local/lib/python3.11/site-packages 2>/dev/null || true")


def test_reset_home_keeps_ssh(emu_host: EmuHost) -> None:
    run(emu_host, "mkdir -p ~/junk/deeper && touch ~/junk/deeper/f ~/.junkrc && ln -sfn /etc ~/etc-link")
    emu_host.reset_home()
    out = run(emu_host, "ls -A ~")
    names = set(out.split())
    assert ".ssh" in names and ".bashrc" in names and ".profile" in names
    assert not names & {"junk", ".junkrc", "etc-link"}
    assert emu_host.rootfs is not None
    assert (emu_host.rootfs / "etc" / "passwd").exists()  # the symlink's target survived


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _state(pid: str) -> str:
    """The process state letter, "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def test_stop_kills_everything() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    host = EmuHost()
    t0 = time.monotonic()
    host.start()
    started_s = time.monotonic() - t0
    netns = host.netns
    try:
        # a daemonized stray, like an agent that outlived its session
        run(host, "setsid nohup sleep 1000 >/dev/null 2>&1 < /dev/null & echo started")
        deadline = time.monotonic() + 20
        while True:
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            comms = {_comm(p) for p in pids}
            if "sleep" in comms or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "sleep" in comms, comms
    finally:
        host.stop()
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for p in pids:
        assert _state(p) in ("", "Z", "X"), f"pid {p} ({_comm(p)}) survived stop()"
    assert host.proc is None and host.workdir is None
    assert started_s < 60, f"start took {started_s:.1f} s"


def test_concurrent_host_gets_its_own_home(emu_host: EmuHost) -> None:
    with EmuHost() as other:
        assert other.host != emu_host.host and other.home != emu_host.home
        run(other, "touch ~/only-on-the-other-host")
        assert (other.home / "only-on-the-other-host").exists()
        assert "only-on-the-other-host" not in run(emu_host, "ls -A ~")
        assert run(other, "uname -m").strip() == "aarch64"
