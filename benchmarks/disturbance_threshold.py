"""The figures behind the disturbed gate's defaults (docs/protocol.md, "Why 3% and 20%").

Measures a small MLP (``agent_common.make_onnx_mlp``, about 0.6 ms) with the agent's own
``run_measurement``, one thread pinned to one CPU, repeats of 25 ms, in three conditions:

- ``quiet``: the measuring process is real-time (SCHED_FIFO), so no process of the normal class can
  take its CPU: the floor of run-queue wait on a CPU nobody else wants (needs root);
- ``hog``: a busy loop pinned to the same CPU;
- ``as-is``: the machine as it is (whatever else runs).

For each: how many repeats waited more than 0.5/1/3/5/10/20% of their duration, and the slowdown of
the repeats by wait-share bucket against the median of the quiet repeats that did not wait.
Run: ``python benchmarks/disturbance_threshold.py [--visits 6]`` (a minute or two).
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
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_common import make_onnx_mlp  # noqa: E402

from nnflash_agent.measure import parse_options, run_measurement  # noqa: E402

HOG = "import os, sys\nos.sched_setaffinity(0, [int(sys.argv[1])])\nwhile True: pass\n"
BUCKETS = ((0.0, 0.005), (0.005, 0.03), (0.03, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 1.01))


def measure(model: Path, cpu: int, visits: int) -> list[tuple[float, float]]:
    pairs: list[tuple[float, float]] = []
    for _ in range(visits):
        opts = parse_options({"affinity": [cpu], "repeat": 20, "min_repeat_ms": 25.0, "warmup_s": 0.2, "threads": 1})
        rec = run_measurement(str(model), "onnxruntime", opts)
        shares = rec["disturbance"]["repeat_wait_share"]
        pairs += [(s, x) for s, x in zip(shares, rec["samples_ms"]) if s is not None]
    return pairs


def condition(name: str, model: Path, cpu: int, visits: int) -> list[tuple[float, float]]:
    hog: Optional[subprocess.Popen[bytes]] = None
    before = os.sched_getscheduler(0)
    try:
        if name == "quiet":
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        if name == "hog":
            hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu)])
            time.sleep(0.3)
        return measure(model, cpu, visits)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        os.sched_setscheduler(0, before, os.sched_param(0))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visits", type=int, default=6)
    args = ap.parse_args(argv)
    model = make_onnx_mlp(Path(tempfile.mkdtemp()) / "mlp.onnx", width=1024, depth=4)
    cpu = sorted(os.sched_getaffinity(0))[-1]
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; measured CPU {cpu}")
    results = {name: condition(name, model, cpu, args.visits) for name in ("quiet", "hog", "as-is")}
    base = statistics.median([x for s, x in results["quiet"] if s < 0.005])
    print(f"reference: median of the quiet repeats that did not wait: {base:.4f} ms")
    for name, pairs in results.items():
        shares = sorted(s for s, _ in pairs)
        above = "  ".join(f">{t:.1%}: {sum(s > t for s in shares) / len(shares):.0%}" for t in (0.005, 0.03, 0.2))
        print(f"[{name}] {len(pairs)} repeats; wait share median {shares[len(shares) // 2]:.4f}, max {shares[-1]:.3f}")
        print(f"    repeats above {above}")
        for lo, hi in BUCKETS:
            xs = [x / base - 1 for s, x in pairs if lo <= s < hi]
            if xs:
                slow = statistics.median(xs)
                print(f"    wait share [{lo:.3f}, {hi:.3f}): {len(xs):4d} repeats, slowdown {slow:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
