"""`nnflash agent install` over a real sshd on loopback, onto this machine (x86_64): wheels fetched for
the device's platform, shipped, installed offline into a venv, selftest run, inventory updated;
re-running changes nothing; a new agent build is an upgrade; uninstall removes it.

The aarch64 path (the Raspberry-Pi-like emulated host) is in tests/emulated/test_pi_emu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sshd_fixture import REPO_ROOT, sshd  # noqa: E402,F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sys.path.insert(0, str(REPO_ROOT))
from test_campaign_ssh import nnflash  # noqa: E402

from nnflash.controller.inventory import Inventory  # noqa: E402


def _env(tmp_path: Path) -> dict:
    (tmp_path / "home").mkdir(exist_ok=True)
    return {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "NNFLASH_INVENTORY": str(tmp_path / "devices.toml"),
        "NNFLASH_KNOWN_HOSTS": str(tmp_path / "no_known_hosts"),
        # the wheel cache survives between runs on one machine (keeps the test fast, works offline)
        "XDG_CACHE_HOME": os.environ.get("NNFLASH_TEST_CACHE", "/tmp/nnflash-test-cache"),
    }


def test_install_upgrade_and_uninstall_over_ssh(sshd, tmp_path):  # noqa: F811
    env = _env(tmp_path)
    prefix = tmp_path / "device" / "nnflash-agent"
    add = ["devices", "add", "box", "--host", "127.0.0.1", "--port", str(sshd.port), "--user", "root"]
    p = nnflash(env, *add, "--key", str(sshd.client_key), "--accept-new-host-key")
    assert p.returncode == 0, p.stderr

    p = nnflash(env, "agent", "install", "box", "--prefix", str(prefix), "--runtime", "onnxruntime", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["action"] == "installed"
    assert report["machine"] == os.uname().machine
    assert report["selftest"]["runtimes"]["onnxruntime"]["status"] == "ok"
    assert report["selftest"]["runtimes"]["tflite"]["status"] == "not_installed"  # only what was asked
    assert any(w.startswith("nnflash_agent-") for w in report["wheels"])
    assert any(w.startswith("onnxruntime-") for w in report["wheels"])
    assert not any(w.startswith(("torch-", "onnx-")) for w in report["wheels"])  # the agent stays light
    assert (prefix / "install.json").is_file() and (prefix / "venv" / "bin" / "nnflash-agent").is_file()
    dev = Inventory.load(tmp_path / "devices.toml").get("box")
    assert dev.agent_command.startswith(str(prefix / "venv" / "bin" / "nnflash-agent"))
    assert dev.facts["machine"] == os.uname().machine and dev.facts["runtimes"] == "onnxruntime"

    # the recorded agent command works: devices check talks to the installed agent
    p = nnflash(env, "devices", "check", "box", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["agent_version"] == report["agent_version"]

    # idempotent: nothing is uploaded or reinstalled the second time
    p = nnflash(env, "agent", "install", "box", "--prefix", str(prefix), "--runtime", "onnxruntime", "--json")
    assert p.returncode == 0, p.stderr
    again = json.loads(p.stdout)
    assert again["action"] == "unchanged" and again["uploaded_bytes"] == 0

    # a changed install (another runtime set) is an upgrade, and only the new wheels travel
    p = nnflash(env, "agent", "install", "box", "--prefix", str(prefix), "--json")
    assert p.returncode == 0, p.stderr
    up = json.loads(p.stdout)
    assert up["action"] == "upgraded"
    assert up["selftest"]["runtimes"]["tflite"]["status"] == "ok"
    assert 0 < up["uploaded_bytes"] < up["shipped_bytes"]

    # the long-running agent: started by hand here (this machine runs no systemd), reached by the
    # bridge the controller runs over SSH
    if not Path("/run/systemd/system").is_dir():
        p = nnflash(env, "agent", "install", "box", "--prefix", str(prefix), "--service")
        assert p.returncode == 2 and "needs systemd" in p.stderr, p.stderr
    agent = prefix / "venv" / "bin" / "nnflash-agent"
    sock = tmp_path / "daemon" / "agent.sock"
    daemon = subprocess.Popen([str(agent), "serve", "--socket", str(sock)], stderr=subprocess.PIPE)
    try:
        assert daemon.stderr is not None and b"listening" in daemon.stderr.readline()
        inv = Inventory.load(tmp_path / "devices.toml")
        dev = inv.get_raw("box")
        inv.add(dev.replace(agent_command=f"{agent} connect --socket {sock}"), replace=True)
        inv.save()
        p = nnflash(env, "devices", "check", "box", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["agent_version"] == report["agent_version"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)

    p = nnflash(env, "agent", "uninstall", "box", "--prefix", str(prefix))
    assert p.returncode == 0, p.stderr
    assert not prefix.exists()
    dev = Inventory.load(tmp_path / "devices.toml").get("box")
    assert "agent_version" not in dev.facts
    p = nnflash(env, "agent", "uninstall", "box", "--prefix", str(prefix))
    assert p.returncode == 0 and "nothing removed" in p.stderr


def test_install_refuses_bad_input_with_one_line(sshd, tmp_path):  # noqa: F811
    env = _env(tmp_path)
    p = nnflash(env, "agent", "install", "nope")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "nope" in p.stderr
    p = nnflash(env, "agent", "install", "local")
    assert p.returncode == 2 and "nothing to install" in p.stderr
    add = ["devices", "add", "box", "--host", "127.0.0.1", "--port", str(sshd.port), "--user", "root"]
    assert nnflash(env, *add, "--key", str(sshd.client_key)).returncode == 0
    p = nnflash(env, "agent", "install", "box", "--runtime", "tensorrt")
    assert p.returncode == 2 and "--runtime" in p.stderr
    p = nnflash(env, "agent", "install", "box")  # unknown host key: refused, nothing installed
    assert p.returncode == 2 and "accept-new-host-key" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = nnflash(env, "agent", "install", "box", "--accept-new-host-key", "--prefix", "/")
    assert p.returncode == 2 and "too broad" in p.stderr
    # a directory that is not an install is never removed
    keep = tmp_path / "not-ours"
    keep.mkdir()
    (keep / "data.txt").write_text("precious")
    p = nnflash(env, "agent", "uninstall", "box", "--prefix", str(keep))
    assert p.returncode == 2 and "not removing" in p.stderr
    assert (keep / "data.txt").read_text() == "precious"
