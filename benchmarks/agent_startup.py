"""Agent start-up time and memory.

- start to ready: spawn ``python -m agent.cli serve`` until its ``hello`` answer arrives (median of N
  spawns; target < 1 s);
- RSS of the idle serving process after hello, after an isolated onnxruntime measurement (the runtime
  loads only in the worker), and after an in-process one (``isolate: false``: onnxruntime loaded in the
  serving process) - target < 60 MB for the idle agent;
- the worker's peak RSS as it reports it (``max_rss_mb``).

    python benchmarks/agent_startup.py [--spawns 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.agent_common import Agent, make_onnx_mlp  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spawns", type=int, default=10)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
