"""Does measuring through the agent change the latency it reports?

Median latency of the same model measured (a) through ``nnflash-agent serve`` (isolated worker, the
default: a fresh process per measurement) and (b) by a bare loop (``session.run`` for onnxruntime,
``invoke`` for TFLite) in a fresh process per round too (``--bare-in-process``: one process for
all rounds), same thread count, same input, both pinned to the same CPU (``--cpu``), interleaved
round by round (the side that goes first alternates) so drifts hit both sides. Fresh processes on
both sides matter: on the development VM one process can run a small model 1.5x slower than the
next for its whole life (memory layout), so a single bare process is one draw against fifteen. Two counting modes, each
compared like for like:

- ``fixed``: the agent with ``fixed_runs=N`` vs N single timed calls in the bare loop;
- ``tvm``: the agent's default (``number`` grown to ``min_repeat_ms``) vs the bare loop timing
  repeats of the same ``number`` calls.

Prints per round, then three ratios agent/bare (target 1.00 +- 0.03): of the medians over rounds,
the median of the per-round ratios (with a 95% bootstrap interval over rounds: it narrows with
``--rounds``), and of the *least disturbed* rounds (each side's minimum round
median). On a shared machine a neighbour's burst slows a whole round of one side by up to 1.5x,
always upwards; the minimum over rounds is the figure such bursts leave alone, so it is the one to
quote there (on a quiet device the three agree). Timings are noisy: quote the ratios, side by
side, from one run.

    python benchmarks/agent_overhead.py [--rounds 15] [--threads 1] [--width 1024] [--cpu 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.agent_common import Agent, make_onnx_mlp, make_tflite_mlp  # noqa: E402


def bare_onnx(path: Path, threads: int):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).standard_normal(inp.shape).astype("float32")}
    return lambda: sess.run(None, feed)


def bare_tflite(path: Path, threads: int):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.default_rng(0).standard_normal(d["shape"]).astype("float32"))
    return it.invoke


def bare_measure(run, mode: str, n: int, number: int, warmup_s: float) -> float:
    clock = time.perf_counter_ns
    end = time.monotonic() + warmup_s
    run()
    while time.monotonic() < end:
        run()
    samples = []
    if mode == "fixed":
        for _ in range(n):
            t = clock()
            run()
            samples.append((clock() - t) / 1e6)
    else:
        for _ in range(n):
            t = clock()
            for _ in range(number):
                run()
            samples.append((clock() - t) / 1e6 / number)
    return statistics.median(samples)


BARE = {"onnxruntime": bare_onnx, "tflite": bare_tflite}


def bare_in_child(runtime: str, path: Path, threads: int, mode: str, n: int, number: int, warmup_s: float) -> float:
    """:func:`bare_measure` in a fresh process (same CPU affinity as this one), as the agent's
    isolated worker is a fresh process: both sides draw their memory layout anew every round."""
    job = json.dumps([runtime, str(path), threads, mode, n, number, warmup_s])
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--bare-child", job],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _bootstrap_ci(ratios: list, n: int = 4000, seed: int = 0) -> tuple:
    """95% percentile-bootstrap interval of the median of ``ratios``."""
    import numpy as np

    r = np.asarray(ratios, float)
    idx = np.random.default_rng(seed).integers(0, len(r), size=(n, len(r)))
    meds = np.median(r[idx], axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def bare_side(runtime: str, path: Path, threads: int, warmup_s: float, in_process: bool):
    """``bare(mode, n, number) -> median ms``: in this process or in a fresh one per call."""
    if in_process:
        run = BARE[runtime](path, threads)
        return lambda mode, n, number: bare_measure(run, mode, n, number, warmup_s)
    return lambda mode, n, number: bare_in_child(runtime, path, threads, mode, n, number, warmup_s)


def _bare_child(job: str) -> int:
    runtime, path, threads, mode, n, number, warmup_s = json.loads(job)
    run = BARE[runtime](Path(path), threads)
    print(bare_measure(run, mode, n, number, warmup_s))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--runs", type=int, default=200, help="fixed mode: timed single calls")
    ap.add_argument("--repeat", type=int, default=20, help="tvm mode: repeats")
    ap.add_argument("--min-repeat-ms", type=float, default=50.0)
    ap.add_argument("--warmup-s", type=float, default=0.5)
    ap.add_argument("--no-tflite", action="store_true")
    ap.add_argument(
        "--bare-in-process",
        action="store_true",
        help="Run the bare loop in this process for every round (default: a fresh process per round).",
    )
    ap.add_argument(
        "--cpu", type=int, default=None, help="CPU both sides are pinned to (default: the last one; -1: no pinning)."
    )
    ns = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1] if ns.cpu is None else ns.cpu
    pin = None if cpu < 0 else [cpu]
    if pin:
        os.sched_setaffinity(0, pin)  # the bare loop; the agent's worker gets the same via "affinity"

    tmp = Path(tempfile.mkdtemp(prefix="nnflash-overhead-"))
    models = {"onnxruntime": make_onnx_mlp(tmp / "mlp.onnx", ns.width, ns.depth)}
    if not ns.no_tflite:
        tfl = make_tflite_mlp(tmp / "mlp.tflite", ns.width, ns.depth)
        if tfl is not None:
            models["tflite"] = tfl
        else:
            print("tflite: model conversion unavailable (litert-torch), skipped")

    agent = Agent(tmp)
    try:
        print(
            f"model: MLP width {ns.width} depth {ns.depth}; threads {ns.threads}; {ns.rounds} interleaved rounds; "
            f"pinned to CPU {pin[0] if pin else 'none'}"
        )
        number: dict = {}  # (runtime, mode) -> the agent's last ``number``, for rounds where bare goes first
        for runtime, path in models.items():
            ref = agent.put(path)
            bare = bare_side(runtime, path, ns.threads, ns.warmup_s, ns.bare_in_process)

            for mode in ("fixed", "tvm"):
                agent_meds, bare_meds = [], []
                for rnd in range(ns.rounds):
                    args = {
                        "artifact": ref,
                        "runtime": runtime,
                        "threads": ns.threads,
                        "warmup_s": ns.warmup_s,
                    }
                    if pin:
                        args["affinity"] = pin
                    if mode == "fixed":
                        args["fixed_runs"] = ns.runs
                    else:
                        args.update(repeat=ns.repeat, min_repeat_ms=ns.min_repeat_ms)
                    n = ns.runs if mode == "fixed" else ns.repeat
                    bare_first = rnd % 2 == 1
                    if bare_first:  # the number the agent will grow to: the one it chose last round
                        b = bare(mode, n, number.get((runtime, mode), 1))
                    r = agent.ask("measure", args)
                    if r["status"] != "ok":
                        print(f"{runtime}: agent failed: {r['status']}: {r['error']}")
                        return 1
                    res = r["result"]
                    number[(runtime, mode)] = res["number"]
                    if not bare_first:
                        b = bare(mode, n, res["number"])
                    agent_meds.append(res["latency_ms_median"])
                    bare_meds.append(b)
                    print(
                        f"  {runtime:11s} {mode:5s} round {rnd + 1}: agent "
                        f"{res['latency_ms_median']:.4f} ms (number={res['number']})  bare {b:.4f} ms"
                    )
                a_med, b_med = statistics.median(agent_meds), statistics.median(bare_meds)
                ratios = [a / b for a, b in zip(agent_meds, bare_meds)]
                per_round = statistics.median(ratios)
                lo, hi = _bootstrap_ci(ratios)
                a_min, b_min = min(agent_meds), min(bare_meds)
                print(
                    f"{runtime:11s} {mode:5s} agent/bare: medians {a_med:.4f}/{b_med:.4f} ms = {a_med / b_med:.3f}; "
                    f"median per-round ratio {per_round:.3f} (95% CI {lo:.3f}-{hi:.3f}); least disturbed rounds "
                    f"{a_min:.4f}/{b_min:.4f} ms = {a_min / b_min:.3f}"
                )
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-child":
        sys.exit(_bare_child(sys.argv[2]))
    sys.exit(main())
