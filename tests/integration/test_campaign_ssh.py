"""Campaigns against a real OpenSSH server with the real agent behind it, and their faults.

Every test checks the database afterwards: each spec measured ok exactly once, nothing lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sshd_fixture import REPO_ROOT, real_agent_command, sshd  # noqa: F401  (pytest fixture)

from nnflash.controller.campaign import Campaign, MeasureSettings
from nnflash.controller.inventory import Device
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import make_connection
from nnflash.models.spec import parse_spec

pytestmark = pytest.mark.integration

FAST = dict(repeat=5, min_repeat_ms=5.0, warmup_s=0.05, timeout_s=60.0)


def small_specs(n: int, seed: int = 0):
    out = []
    for k in range(n):
        out.append(
            parse_spec(
                {
                    "family": "dense",
                    "cells": [{"depth": 3 + k % 3, "width": 8 + 4 * k, "tc": 4}, {"depth": 3, "width": 16, "tc": 8}],
                    "input_shape": [3, 16, 16],
                    "seed": seed,
                }
            )
        )
    return out


def ssh_device(server, store: Path, name: str = "pi") -> Device:
    return Device(
        name=name,
        host="127.0.0.1",
        port=server.port,
        user="root",
        key_file=str(server.client_key),
        agent_command=real_agent_command(store),
    )


def connector(tmp_path: Path):
    opts = {
        "known_hosts_path": str(tmp_path / "no_known_hosts"),
        "pinned_hosts_path": str(tmp_path / "pinned_hosts"),
        "accept_new_host_key": True,
        "retries": 2,
        "backoff_s": 0.2,
    }
    return lambda dev: make_connection(dev, **opts)


def check_db(db: Path, specs, device: str = "pi", threads=None) -> list[dict]:
    store = ResultsDB(db)
    try:
        rows = store.measurements(device=device)
    finally:
        store.close()
    ok = [r for r in rows if r["status"] == "ok" and r["threads"] == threads]
    assert sorted(r["spec_id"] for r in ok) == sorted(s.spec_id for s in specs), "every spec measured ok once"
    assert len({r["request_id"] for r in rows}) == len(rows)
    return rows


def agent_pids(store: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd and str(store).encode() in cmd and any(b"nnflash_agent.cli" in c for c in cmd):
            pids.append(int(entry))
    return pids


def test_profile_over_ssh_and_resume(sshd, tmp_path):  # noqa: F811
    specs = small_specs(4)
    db = tmp_path / "db.sqlite"
    dev = ssh_device(sshd, tmp_path / "store")
    rows = []
    store = ResultsDB(db)
    camp = Campaign(
        specs,
        [dev],
        MeasureSettings(**FAST),
        store,
        tmp_path / "art",
        connect=connector(tmp_path),
        on_result=rows.append,
    )
    res = camp.run()
    store.close()
    assert res.devices["pi"].ok == 4 and not res.devices["pi"].error
    assert all(r["latency_ms_median"] > 0 for r in rows)
    check_db(db, specs)
    # a rerun measures nothing again
    store = ResultsDB(db)
    res2 = Campaign(specs, [dev], MeasureSettings(**FAST), store, tmp_path / "art", connect=connector(tmp_path)).run()
    store.close()
    assert res2.devices["pi"].skipped == 4 and res2.devices["pi"].ok == 0
    check_db(db, specs)


def test_server_stopped_mid_campaign(sshd, tmp_path):  # noqa: F811
    specs = small_specs(5)
    db = tmp_path / "db.sqlite"
    dev = ssh_device(sshd, tmp_path / "store")
    fired = threading.Event()

    def outage():
        time.sleep(0.3)  # inside the next measurement
        sshd.stop()  # sessions drop; the orphaned agent finishes and journals its result
        time.sleep(1.5)
        sshd.start()

    def on_result(row):
        if not fired.is_set():
            fired.set()
            threading.Thread(target=outage, daemon=True).start()

    store = ResultsDB(db)
    settings = MeasureSettings(repeat=10, min_repeat_ms=60.0, warmup_s=0.05, timeout_s=60.0)
    res = Campaign(
        specs, [dev], settings, store, tmp_path / "art", connect=connector(tmp_path), on_result=on_result
    ).run()
    store.close()
    assert res.devices["pi"].reconnects >= 1
    assert res.devices["pi"].ok == 5, res.rows
    check_db(db, specs)


def test_agent_killed_mid_measurement(sshd, tmp_path):  # noqa: F811
    specs = small_specs(4)
    db = tmp_path / "db.sqlite"
    agent_store = tmp_path / "store"
    dev = ssh_device(sshd, agent_store)
    fired = threading.Event()

    def kill_agent():
        time.sleep(0.3)
        for pid in agent_pids(agent_store):
            os.kill(pid, signal.SIGKILL)

    def on_result(row):
        if not fired.is_set():
            fired.set()
            threading.Thread(target=kill_agent, daemon=True).start()

    store = ResultsDB(db)
    settings = MeasureSettings(repeat=10, min_repeat_ms=60.0, warmup_s=0.05, timeout_s=60.0)
    res = Campaign(
        specs, [dev], settings, store, tmp_path / "art", connect=connector(tmp_path), on_result=on_result
    ).run()
    store.close()
    assert res.devices["pi"].reconnects >= 1
    check_db(db, specs)


def test_corrupt_uploaded_file_is_replaced(sshd, tmp_path):  # noqa: F811
    specs = small_specs(2)
    db = tmp_path / "db.sqlite"
    agent_store = tmp_path / "store"
    dev = ssh_device(sshd, agent_store)
    store = ResultsDB(db)
    Campaign(specs, [dev], MeasureSettings(**FAST), store, tmp_path / "art", connect=connector(tmp_path)).run()
    # corrupt every artifact on the device, keeping its size (so the upload skip does not notice)
    for f in agent_store.glob("*.onnx"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    settings = MeasureSettings(**{**FAST, "threads": 1})  # a new key: measured again with the same files
    res = Campaign(specs, [dev], settings, store, tmp_path / "art", connect=connector(tmp_path)).run()
    store.close()
    assert res.devices["pi"].ok == 2, res.rows
    check_db(db, specs, threads=1)


def test_hung_agent_becomes_a_failed_measurement(sshd, tmp_path):  # noqa: F811
    specs = small_specs(3)
    db = tmp_path / "db.sqlite"
    agent_store = tmp_path / "store"
    dev = ssh_device(sshd, agent_store)
    fired = threading.Event()
    stopped: list[int] = []

    def freeze_agent():
        time.sleep(0.2)
        for pid in agent_pids(agent_store):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    def on_result(row):
        if not fired.is_set():
            fired.set()
            threading.Thread(target=freeze_agent, daemon=True).start()

    store = ResultsDB(db)
    settings = MeasureSettings(repeat=10, min_repeat_ms=60.0, warmup_s=0.05, timeout_s=8.0, answer_margin_s=1.0)
    try:
        res = Campaign(
            specs,
            [dev],
            settings,
            store,
            tmp_path / "art",
            connect=connector(tmp_path),
            on_result=on_result,
            max_attempts=1,
        ).run()
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        store.close()
    statuses = sorted(r["status"] for r in res.rows)
    assert statuses.count("timeout") == 1 and statuses.count("ok") == 2, statuses


def nnflash(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnflash.controller.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )


def test_cli_devices_and_profile_with_host_key_rules(sshd, tmp_path):  # noqa: F811
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "NNFLASH_INVENTORY": str(tmp_path / "devices.toml"),
        "NNFLASH_KNOWN_HOSTS": str(tmp_path / "no_known_hosts"),
    }
    (tmp_path / "home").mkdir()
    add = [
        "devices",
        "add",
        "pi",
        "--host",
        "127.0.0.1",
        "--port",
        str(sshd.port),
        "--user",
        "root",
        "--key",
        str(sshd.client_key),
        "--agent-command",
        real_agent_command(tmp_path / "store"),
    ]
    assert nnflash(env, *add).returncode == 0
    p = nnflash(env, "devices", "check", "pi")
    assert p.returncode == 2 and "accept-new-host-key" in p.stderr and "SHA256:" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = nnflash(env, *add, "--replace", "--accept-new-host-key")
    assert p.returncode == 0 and "pinned" in p.stderr, p.stderr
    p = nnflash(env, "devices", "check", "pi", "--json")
    assert p.returncode == 0, p.stderr
    facts = json.loads(p.stdout)
    assert facts["machine"] and facts["agent_version"]
    specs = tmp_path / "specs.jsonl"
    specs.write_text("".join(s.to_json_line() + "\n" for s in small_specs(2)))
    db = tmp_path / "db.sqlite"
    p = nnflash(
        env, "profile", str(specs), "--device", "pi", "--db", str(db), "--repeat", "3", "--passes", "1", "--json"
    )
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(lines) == 2 and all(x["status"] == "ok" and x["latency_ms_median"] > 0 for x in lines)
    for key in ("spec_id", "device", "runtime", "threads", "latency_ms_mean", "latency_ms_p90", "energy_mj"):
        assert key in lines[0]
    # the host key changes: always refused, data already stored stays
    sshd.new_host_key()
    sshd.restart()
    p = nnflash(env, "devices", "check", "pi")
    assert p.returncode == 2 and "changed" in p.stderr.lower(), p.stderr
    p = nnflash(env, "results", "--db", str(db), "--json")
    assert len(p.stdout.splitlines()) == 2
