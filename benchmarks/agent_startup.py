"""Agent start-up time and memory.

- start to ready: spawn ``python -m nnflash_agent.cli serve`` until its ``hello`` answer arrives (median of N
  spawns; target < 1 s);
- RSS of the idle serving process after hello, after an isolated onnxruntime measurement (the runtime
  loads only in the worker), and after an in-process one (``isolate: false``: onnxruntime loaded in the
  serving process) - target < 60 MB for the idle agent;
- the worker's peak RSS as it reports it (``max_rss_mb``);
- measure turn-around (request to response, tiny model, 1 s of controller idle time between
  requests) with and without ``serve --prespawn``, and the RSS of the agent plus its spare worker;
- a session with the long-running agent (``serve --socket --prespawn`` reached through
  ``connect``) against spawning ``serve``: time to hello and to the first measurement's answer.

    python benchmarks/agent_startup.py [--spawns 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.agent_common import ROOT, Agent, make_onnx_mlp  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spawns", type=int, default=10)
    ap.add_argument("--turns", type=int, default=5)
    ns = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nnflash-startup-"))

    times = []
    for i in range(ns.spawns):
        agent = Agent(tmp / f"a{i}")
        r = agent.ask("hello")
        times.append(time.perf_counter() - agent.t_spawn)
        assert r["status"] == "ok", r
        agent.close()
    print(
        f"start to ready (spawn + hello): median {statistics.median(times) * 1000:.0f} ms, "
        f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {ns.spawns} spawns"
    )

    model = make_onnx_mlp(tmp / "mlp.onnx", 256, 2)
    agent = Agent(tmp / "rss")
    try:
        agent.ask("hello")
        print(f"RSS idle serving process after hello:                {agent.rss_mb():6.1f} MB")
        ref = agent.put(model)
        args = {"artifact": ref, "runtime": "onnxruntime", "repeat": 5, "min_repeat_ms": 5, "warmup_s": 0.1}
        r = agent.ask("measure", args)
        assert r["status"] == "ok", r
        print(
            f"RSS idle serving process after an isolated measure:  {agent.rss_mb():6.1f} MB"
            f"   (worker peak RSS {r['result']['max_rss_mb']:.1f} MB)"
        )
        r = agent.ask("measure", dict(args, isolate=False))
        assert r["status"] == "ok", r
        print(f"RSS serving process with onnxruntime loaded in it:    {agent.rss_mb():6.1f} MB   (isolate=false)")
    finally:
        agent.close()

    for extra in ((), ("--prespawn",)):
        agent = Agent(tmp / f"turn{len(extra)}", extra)
        try:
            agent.ask("hello")
            ref = agent.put(model)
            walls = []
            for _ in range(ns.turns):
                t = time.perf_counter()
                r = agent.ask("measure", dict(args, repeat=3, warmup_s=0.0))
                walls.append(time.perf_counter() - t)
                assert r["status"] == "ok", r
                time.sleep(1.0)
            label = "serve --prespawn" if extra else "serve           "
            total = agent.rss_mb() + _children_rss_mb(agent.proc.pid)
            print(
                f"{label} measure turn-around median {statistics.median(walls) * 1000:5.0f} ms"
                f" (in-worker {r['result']['duration_s'] * 1000:.0f} ms);"
                f" idle RSS agent + spare {total:.1f} MB"
            )
        finally:
            agent.close()

    # the long-running agent (serve --socket --prespawn) reached through the connect bridge, against
    # spawning serve for each session: time to hello, then to the first measurement's answer
    sock = tmp / "daemon" / "agent.sock"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    daemon_store = tmp / "daemon-store"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "nnflash_agent.cli", "serve", "--socket", str(sock), "--prespawn"]
        + ["--store", str(daemon_store / "store"), "--journal", str(daemon_store / "journal.jsonl")],
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert daemon.stderr is not None and b"listening" in daemon.stderr.readline()
        results = {}
        for label, command in (("spawn serve  ", None), ("connect      ", ["connect", "--socket", str(sock)])):
            hello, first = [], []
            for i in range(ns.turns):
                a = Agent(tmp / f"sess{i}" if command is None else daemon_store, command=command)
                try:
                    a.ask("hello")
                    hello.append(time.perf_counter() - a.t_spawn)
                    ref = a.put(model)
                    r = a.ask("measure", dict(args, repeat=3, warmup_s=0.0))
                    assert r["status"] == "ok", r
                    first.append(time.perf_counter() - a.t_spawn)
                finally:
                    a.close()
                time.sleep(1.0)  # the daemon refills its spare worker while idle
            results[label] = (statistics.median(hello), statistics.median(first))
            print(
                f"{label} session start to hello median {results[label][0] * 1000:5.0f} ms, "
                f"to the first measurement's answer {results[label][1] * 1000:5.0f} ms"
            )
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    return 0


def _children_rss_mb(pid: int) -> float:
    import psutil

    return sum(c.memory_info().rss for c in psutil.Process(pid).children(recursive=True)) / 2**20


if __name__ == "__main__":
    sys.exit(main())
