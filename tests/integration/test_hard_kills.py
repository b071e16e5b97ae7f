"""Hard kills lose nothing (issue 12, section 3), against a real OpenSSH server and the real agent.

- The controller is SIGKILLed at 20 random moments of campaigns over SSH and rerun after each: the
  database passes ``PRAGMA integrity_check`` every time, and in the end every planned measurement
  is stored exactly once.
- Two ``nnflash profile`` processes measure two devices into the same (new) database at once: both
  finish, every result either printed is stored once, nothing is doubled.
- The agent's measurement worker is SIGKILLed mid-measurement, and the agent itself dies halfway
  through writing a result to its journal: the controller stores a failure with its reason, and
  the model is measured again.

Measurements are real (tiny models, few repeats). The disturbance gate is switched off where the
settings allow it: these tests are about kills, and two agents on a small CI machine disturb each
other by design.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sshd_fixture import REPO_ROOT, _children, sshd  # noqa: F401  (pytest fixture)

from nnflash.controller.campaign import Campaign, MeasureSettings
from nnflash.controller.inventory import Device
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import make_connection
from nnflash.models.export import export_spec
from nnflash.models.spec import parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 20
# disturbed_share_max=None: record the disturbance figures, never gate (see the module docstring)
QUICK: dict[str, Any] = dict(repeat=3, min_repeat_ms=1.0, warmup_s=0.0, timeout_s=60.0, disturbed_share_max=None)


def tiny_specs(n: int) -> list:
    return [
        parse_spec(
            {
                "family": "dense",
                "cells": [{"depth": 2 + k, "width": 8, "tc": 2}],
                "input_shape": [3, 8, 8],
                "num_classes": 4,
                "seed": k,
            }
        )
        for k in range(n)
    ]


def agent_command(tmp_path: Path, name: str, hooks: bool = False) -> str:
    env = "NNFLASH_AGENT_TEST_HOOKS=1 " if hooks else ""
    return (
        f"cd {REPO_ROOT} && {env}{sys.executable} -m nnflash_agent.cli serve "
        f"--store {tmp_path / name / 'store'} --journal {tmp_path / name / 'journal.jsonl'}"
    )


def ssh_device(server: Any, tmp_path: Path, name: str = "pi", hooks: bool = False) -> Device:
    return Device(
        name=name,
        host="127.0.0.1",
        port=server.port,
        user="root",
        key_file=str(server.client_key),
        agent_command=agent_command(tmp_path, name, hooks),
    )


def conn_options(tmp_path: Path) -> dict[str, Any]:
    return {
        "known_hosts_path": str(tmp_path / "no_known_hosts"),
        "pinned_hosts_path": str(tmp_path / "pinned_hosts"),
        "accept_new_host_key": True,
        "retries": 2,
        "backoff_s": 0.2,
    }


def integrity(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def rows(db: Path) -> list[dict]:
    with ResultsDB(db) as store:
        return store.measurements()


# -- the controller killed at random moments -------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    # The controller: the campaign library as `nnflash profile` runs it, with the artifacts
    # exported beforehand (so this process does not import torch); one campaign per visit given.
    import dataclasses, json, sys
    from pathlib import Path
    from nnflash.controller.campaign import Campaign, MeasureSettings
    from nnflash.controller.inventory import Device
    from nnflash.controller.store import ResultsDB
    from nnflash.controller.transport import make_connection
    from nnflash.models.spec import parse_spec

    cfg = json.loads(Path(sys.argv[1]).read_text())
    specs = [parse_spec(s) for s in cfg["specs"]]


    @dataclasses.dataclass(frozen=True)
    class Art:
        spec_id: str
        path: str
        sha256: str
        format: str
        size: int
        exporter: str
        versions: tuple


    arts = {a["spec_id"]: Art(**{**a, "versions": tuple(map(tuple, a["versions"]))}) for a in cfg["artifacts"]}
    device = Device(**cfg["device"])
    store = ResultsDB(cfg["db"])
    for visit in map(int, sys.argv[2:]):
        Campaign(
            specs, [device], MeasureSettings(**cfg["settings"]), store, cfg["art_dir"],
            connect=lambda d: make_connection(d, **cfg["conn"]),
            export_fn=lambda spec, fmt, out: arts[spec.spec_id],
            visit=visit,
        ).run()
    store.close()
    print("done", flush=True)
    """
)


def unfinished(db: Path, specs: list, visits: int) -> list[int]:
    """The visits below ``visits`` that do not have every spec measured ok yet."""
    done: dict[int, int] = {}
    for r in rows(db):
        if r["status"] == "ok":
            done[r["visit"]] = done.get(r["visit"], 0) + 1
    return [v for v in range(visits) if done.get(v, 0) < len(specs)]


def test_controller_sigkilled_at_random_moments(sshd, tmp_path: Path) -> None:  # noqa: F811
    specs = tiny_specs(2)
    art_dir = tmp_path / "art"
    arts = [export_spec(s, "onnx", art_dir) for s in specs]
    db = tmp_path / "db.sqlite"
    cfg = {
        "specs": [json.loads(s.canonical_json()) for s in specs],
        "artifacts": [
            {
                "spec_id": a.spec_id,
                "path": str(a.path),
                "sha256": a.sha256,
                "format": a.format,
                "size": a.size,
                "exporter": a.exporter,
                "versions": [list(v) for v in a.versions],
            }
            for a in arts
        ],
        "device": {
            "name": "pi",
            "host": "127.0.0.1",
            "port": sshd.port,
            "user": "root",
            "key_file": str(sshd.client_key),
            "agent_command": agent_command(tmp_path, "pi"),
        },
        "conn": conn_options(tmp_path),
        "settings": {**QUICK, "isolate": False},
        "db": str(db),
        "art_dir": str(art_dir),
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "driver.py").write_text(DRIVER)

    def controller(*visits: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cfg.json"), *map(str, visits)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    t0 = time.monotonic()
    proc = controller(0)  # an uninterrupted run: how long one campaign takes here
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "done" in out, err[-3000:]
    one_run_s = time.monotonic() - t0
    rng = random.Random(12)
    kills, visit, runs = 0, 1, 0
    moments: list[float] = []
    while kills < KILLS:
        runs += 1
        assert runs <= KILLS + 15, f"only {kills} of {runs} runs were still running at their kill moment"
        # each run first reruns the campaigns a kill left unfinished, then starts the next one
        proc = controller(*unfinished(db, specs, visit), visit)
        delay = rng.uniform(0.02, 1.6) * one_run_s
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        integrity(db)
        if alive:
            kills += 1
            moments.append(round(delay, 2))
        visit += 1
    proc = controller(*unfinished(db, specs, visit))  # the last rerun, to its end
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "done" in out, err[-3000:]
    integrity(db)

    stored = rows(db)
    ok = [(r["spec_id"], r["visit"]) for r in stored if r["status"] == "ok"]
    planned = {(s.spec_id, v) for s in specs for v in range(visit)}
    failed = [(r["visit"], r["status"], r["error"]) for r in stored if r["status"] != "ok"]
    assert sorted(ok) == sorted(planned), f"every planned measurement stored exactly once; failures: {failed}"
    assert len({r["request_id"] for r in stored}) == len(stored)
    assert all(r["latency_ms_median"] > 0 for r in stored if r["status"] == "ok")
    print(f"{kills} kills at {moments} s; {len(stored)} rows, {len(ok)} ok; one run {one_run_s:.1f} s")


# -- two nnflash processes, one database -----------------------------------------------------------


def test_two_processes_profile_two_devices_into_one_database(sshd, tmp_path: Path) -> None:  # noqa: F811
    specs = tiny_specs(2)
    (tmp_path / "specs.jsonl").write_text("".join(s.to_json_line() + "\n" for s in specs))
    inventory = tmp_path / "devices.toml"
    inventory.write_text(
        "".join(
            f'[devices.{name}]\nhost = "127.0.0.1"\nport = {sshd.port}\nuser = "root"\n'
            f'key_file = "{sshd.client_key}"\nagent_command = "{agent_command(tmp_path, name)}"\n\n'
            for name in ("pi1", "pi2")
        )
    )
    known_hosts = tmp_path / "known_hosts"  # the server's key, as ssh-keyscan would record it
    key_type, key_b64 = sshd.host_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"{sshd.hostkey_name} {key_type} {key_b64}\n")
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "NNFLASH_INVENTORY": str(inventory),
        "NNFLASH_KNOWN_HOSTS": str(known_hosts),
    }
    (tmp_path / "home").mkdir()
    db = tmp_path / "shared.db"
    argv = ["profile", str(tmp_path / "specs.jsonl"), "--db", str(db), "--repeat", "3", "--min-repeat-ms", "1"]
    argv += ["--passes", "1"]
    argv += ["--disturbed-share", "1"]  # the two agents share this machine's CPUs by design
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "nnflash.controller.cli", *argv, "--device", name, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("pi1", "pi2")
    }
    printed: dict[str, list[dict]] = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        printed[name] = [json.loads(x) for x in out.splitlines()]
    integrity(db)
    stored = rows(db)
    by_id = {r["request_id"]: r for r in stored}
    assert len(by_id) == len(stored), "no request stored twice"
    for name in ("pi1", "pi2"):
        mine = [r for r in stored if r["device"] == name]
        # nothing lost: every result the process printed is stored, and nothing else
        assert sorted(r["request_id"] for r in printed[name]) == sorted(r["request_id"] for r in mine)
        for row in printed[name]:
            assert by_id[row["request_id"]]["status"] == row["status"]
        for s in specs:
            statuses = [r["status"] for r in mine if r["spec_id"] == s.spec_id]
            assert statuses and statuses.count("ok") <= 1, (name, statuses)
            assert statuses[-1] in ("ok", "disturbed"), (name, statuses)
    print({name: [r["status"] for r in rows_] for name, rows_ in printed.items()})


# -- the agent's worker, and the agent in its journal ----------------------------------------------


def test_worker_sigkilled_mid_measurement(sshd, tmp_path: Path) -> None:  # noqa: F811
    specs = tiny_specs(2)
    db = tmp_path / "db.sqlite"
    dev = ssh_device(sshd, tmp_path)
    killed: list[int] = []

    def connect(d: Device) -> Any:
        conn = make_connection(d, **conn_options(tmp_path))
        request = conn.request

        def measure_and_kill(verb: str, args: Any = None, timeout_s: float = 60.0, **kw: Any) -> Any:
            if verb == "measure" and not killed:

                def kill_worker() -> None:
                    agent_pid = int(conn.hello["pid"])
                    deadline = time.monotonic() + 30
                    while not _children(agent_pid) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    time.sleep(1.0)  # the worker has started and is timing the model
                    for pid in _children(agent_pid):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

                threading.Thread(target=kill_worker, daemon=True).start()
            return request(verb, args, timeout_s, **kw)

        conn.request = measure_and_kill
        return conn

    # long enough a measurement (6 repeats of >= 250 ms, after the worker's start) to be inside it
    # a second after it began
    slow = MeasureSettings(**{**QUICK, "repeat": 6, "min_repeat_ms": 250.0})
    with ResultsDB(db) as store:
        first = Campaign(specs, [dev], slow, store, tmp_path / "art", connect=connect).run()
    assert killed, "no worker was found to kill"
    crashed = [r for r in first.rows if r["status"] != "ok"]
    assert [r["spec_id"] for r in crashed] == [specs[0].spec_id], first.rows
    assert crashed[0]["status"] == "crashed" and "killed by SIGKILL" in crashed[0]["error"], crashed
    integrity(db)
    with ResultsDB(db) as store:  # the rerun measures the model again
        again = Campaign(specs, [dev], MeasureSettings(**QUICK), store, tmp_path / "art", connect=connect).run()
    assert [(r["spec_id"], r["status"]) for r in again.rows] == [(specs[0].spec_id, "ok")]
    stored = rows(db)
    assert sorted((r["spec_id"], r["status"]) for r in stored) == sorted(
        [(specs[0].spec_id, "crashed"), (specs[0].spec_id, "ok"), (specs[1].spec_id, "ok")]
    )


def test_agent_sigkilled_mid_journal_write(sshd, tmp_path: Path) -> None:  # noqa: F811
    specs = tiny_specs(2)
    db = tmp_path / "db.sqlite"
    dev = ssh_device(sshd, tmp_path, hooks=True)
    journal = tmp_path / "pi" / "journal.jsonl"
    faults: list[str] = []

    def connect(d: Device) -> Any:
        conn = make_connection(d, **conn_options(tmp_path))
        request = conn.request

        def measure(verb: str, args: Any = None, timeout_s: float = 60.0, **kw: Any) -> Any:
            if verb == "measure" and not faults:  # the first measurement: die in the journal
                faults.append(kw.get("request_id") or "")
                args = {**args, "_test_fault": "kill_in_journal"}
            return request(verb, args, timeout_s, **kw)

        conn.request = measure
        return conn

    with ResultsDB(db) as store:
        result = Campaign(specs, [dev], MeasureSettings(**QUICK), store, tmp_path / "art", connect=connect).run()
    assert result.devices["pi"].reconnects == 1 and not result.devices["pi"].error
    integrity(db)
    stored = rows(db)
    first = [r for r in stored if r["spec_id"] == specs[0].spec_id]
    assert [r["status"] for r in first] == ["connection_lost", "ok"], first
    reason = first[0]["error"]
    assert "exited with status" in reason and "no result in the device's journal" in reason, reason
    assert [r["status"] for r in stored if r["spec_id"] == specs[1].spec_id] == ["ok"]
    # the journal: the torn half line, then whole lines from a fresh line on
    lines = journal.read_bytes().split(b"\n")
    torn = [x for x in lines if x and not x.endswith(b"}")]
    assert len(torn) == 1 and faults[0].encode() in torn[0]
    whole = [json.loads(x) for x in lines if x and x.endswith(b"}")]
    assert {e["id"] for e in whole} == {r["request_id"] for r in stored if r["status"] == "ok"}
    with ResultsDB(db) as store:  # a rerun has nothing left to measure
        again = Campaign(specs, [dev], MeasureSettings(**QUICK), store, tmp_path / "art", connect=connect).run()
    assert again.rows == [] and again.devices["pi"].skipped == 2
