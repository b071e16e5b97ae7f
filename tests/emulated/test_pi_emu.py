"""The user's path on a Raspberry-Pi-like aarch64 host (emulated, no internet inside):
``devices add --accept-new-host-key``, ``agent install``, ``devices check`` (aarch64), ``profile`` with
both runtimes, an idempotent re-install, ``agent uninstall``. All through the ``nnflash`` CLI.

The figures of the run (install time per step, bytes shipped, latencies) are printed; run with
``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from emuhost import REPO_ROOT, EmuHost, emu_host_fixture  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from nnflash.models.spec import parse_spec  # noqa: E402

pytestmark = [pytest.mark.emulated, pytest.mark.slow]
__all__ = ["emu_host_fixture"]

SPECS = [
    {"family": "dense", "cells": [{"depth": 3, "width": 8, "tc": 4}, {"depth": 3, "width": 16, "tc": 8}]},
    {"family": "dense", "cells": [{"depth": 4, "width": 8, "tc": 8}], "conv": "depthwise"},
]


def nnflash(env: dict, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnflash.controller.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cli_env(emu_host: EmuHost, tmp_path_factory: pytest.TempPathFactory) -> dict:
    emu_host.reset_home()  # every run installs from scratch
    tmp = tmp_path_factory.mktemp("pi-emu")
    (tmp / "home").mkdir()
    return {
        **os.environ,
        "HOME": str(tmp / "home"),
        "XDG_CONFIG_HOME": str(tmp / "cfg"),
        "NNFLASH_INVENTORY": str(tmp / "devices.toml"),
        "NNFLASH_KNOWN_HOSTS": str(tmp / "no_known_hosts"),
        # wheels fetched for aarch64 are cached between runs on one machine
        "XDG_CACHE_HOME": os.environ.get("NNFLASH_TEST_CACHE", "/tmp/nnflash-test-cache"),
        "TMPDIR": str(tmp),
    }


def test_install_check_profile_uninstall(emu_host: EmuHost, cli_env: dict, tmp_path: Path) -> None:
    env = cli_env
    add = ["devices", "add", "pi-emu", "--host", emu_host.host, "--user", "pi", "--key", str(emu_host.key_path)]
    p = nnflash(env, *add)
    assert p.returncode == 0, p.stderr
    p = nnflash(env, "agent", "install", "pi-emu")  # unknown host key: refused, nothing installed
    assert p.returncode == 2 and "--accept-new-host-key" in p.stderr, p.stderr
    assert not (emu_host.home / ".local" / "share" / "nnflash-agent").exists()
    p = nnflash(env, *add, "--replace", "--accept-new-host-key")
    assert p.returncode == 0 and "pinned" in p.stderr, p.stderr
    # onnxruntime has no wheels for 32-bit ARM, but this device is 64-bit: nothing to refuse here;
    # a runtime name that does not exist is refused before anything is shipped
    p = nnflash(env, "agent", "install", "pi-emu", "--runtime", "onnxruntime,tensorrt")
    assert p.returncode == 2 and "--runtime" in p.stderr

    p = nnflash(env, "agent", "install", "pi-emu", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    print(f"\ninstall on the emulated Pi: {json.dumps(report['seconds'])}")
    print(f"shipped {len(report['wheels'])} wheels, {report['shipped_bytes'] / 1e6:.1f} MB")
    assert report["action"] == "installed" and report["machine"] == "aarch64"
    assert report["python"].startswith("3.11") and report["glibc"] == "2.36"
    for runtime in ("onnxruntime", "tflite"):
        assert report["selftest"]["runtimes"][runtime]["status"] == "ok", report["selftest"]
    assert any(w.startswith("onnxruntime-") and "aarch64" in w for w in report["wheels"])
    assert any(w.startswith("ai_edge_litert-") and "aarch64" in w for w in report["wheels"])
    venv = emu_host.home / ".local" / "share" / "nnflash-agent" / "venv"
    assert (venv / "bin" / "nnflash-agent").exists()
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "torch").exists() and not (site / "controller").exists()

    p = nnflash(env, "devices", "check", "pi-emu", "--json")
    assert p.returncode == 0, p.stderr
    facts = json.loads(p.stdout)
    assert facts["machine"] == "aarch64" and facts["agent_version"] == report["agent_version"]
    assert "onnxruntime" in facts["runtimes"] and "litert" in facts["runtimes"]

    specs = tmp_path / "specs.jsonl"
    specs.write_text("".join(parse_spec(s).to_json_line() + "\n" for s in SPECS))
    db = tmp_path / "lab.db"
    for runtime in ("onnxruntime", "tflite"):
        p = nnflash(
            env,
            *("profile", str(specs), "--device", "pi-emu", "--runtime", runtime, "--threads", "1"),
            *("--repeat", "3", "--min-repeat-ms", "5", "--passes", "1", "--db", str(db), "--json"),
            # one row per spec: the emulator's timing is not what this test checks (repeats never gate)
            *("--disturbed-share", "1"),
        )
        assert p.returncode == 0, p.stderr
        rows = [json.loads(line) for line in p.stdout.splitlines()]
        assert len(rows) == len(SPECS), p.stdout
        for row in rows:
            assert row["status"] == "ok" and row["device"] == "pi-emu" and row["runtime"] == runtime, row
            assert row["latency_ms_median"] > 0
        print(f"{runtime} on the emulated Pi: {[round(r['latency_ms_median'], 2) for r in rows]} ms")
    p = nnflash(env, "results", "--db", str(db), "--json")
    stored = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(stored) == 2 * len(SPECS) and all(r["status"] == "ok" for r in stored)

    p = nnflash(env, "agent", "install", "pi-emu", "--json")  # idempotent
    assert p.returncode == 0, p.stderr
    again = json.loads(p.stdout)
    assert again["action"] == "unchanged" and again["uploaded_bytes"] == 0
    print(f"re-install (unchanged): {again['seconds']}")

    p = nnflash(env, "agent", "install", "pi-emu", "--service")  # no systemd in the chroot
    assert p.returncode == 2 and "needs systemd" in p.stderr, p.stderr

    p = nnflash(env, "agent", "uninstall", "pi-emu")
    assert p.returncode == 0, p.stderr
    assert not (emu_host.home / ".local" / "share" / "nnflash-agent").exists()
    p = nnflash(env, "devices", "check", "pi-emu")
    assert p.returncode == 2  # the agent is gone: a clear one-line error
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
