"""Does measuring through the agent change the latency it reports?

Median latency of the same model measured (a) through ``nnflash-agent serve`` (isolated worker, the
default) and (b) by a bare loop in this process (``session.run`` for onnxruntime, ``invoke`` for
TFLite), same thread count, same input, interleaved round by round so drifts hit both sides. Two
counting modes, each compared like for like:

- ``fixed``: the agent with ``fixed_runs=N`` vs N single timed calls in the bare loop;
- ``tvm``: the agent's default (``number`` grown to ``min_repeat_ms``) vs the bare loop timing
  repeats of the same ``number`` calls.

Prints per round and the ratio agent/bare of the medians over rounds (target 1.00 +- 0.03).
Timings on shared machines are noisy: quote the ratio, side by side, from one run.

    python benchmarks/agent_overhead.py [--rounds 7] [--threads 1] [--width 512]
"""

from __future__ import annotations

import argparse
import statistics
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--runs", type=int, default=200, help="fixed mode: timed single calls")
    ap.add_argument("--repeat", type=int, default=20, help="tvm mode: repeats")
    ap.add_argument("--min-repeat-ms", type=float, default=50.0)
    ap.add_argument("--warmup-s", type=float, default=0.5)
    ap.add_argument("--no-tflite", action="store_true")
    ns = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="nnflash-overhead-"))
    models = {"onnxruntime": (make_onnx_mlp(tmp / "mlp.onnx", ns.width, ns.depth), bare_onnx)}
    if not ns.no_tflite:
        tfl = make_tflite_mlp(tmp / "mlp.tflite", ns.width, ns.depth)
        if tfl is not None:
            models["tflite"] = (tfl, bare_tflite)
        else:
            print("tflite: model conversion unavailable (litert-torch), skipped")

    agent = Agent(tmp)
    try:
        print(f"model: MLP width {ns.width} depth {ns.depth}; threads {ns.threads}; {ns.rounds} interleaved rounds")
        for runtime, (path, make_bare) in models.items():
            ref = agent.put(path)
            run = make_bare(path, ns.threads)
            for mode in ("fixed", "tvm"):
                agent_meds, bare_meds = [], []
                for rnd in range(ns.rounds):
                    args = {
                        "artifact": ref,
                        "runtime": runtime,
                        "threads": ns.threads,
                        "warmup_s": ns.warmup_s,
                    }
                    if mode == "fixed":
                        args["fixed_runs"] = ns.runs
                    else:
                        args.update(repeat=ns.repeat, min_repeat_ms=ns.min_repeat_ms)
                    r = agent.ask("measure", args)
                    if r["status"] != "ok":
                        print(f"{runtime}: agent failed: {r['status']}: {r['error']}")
                        return 1
                    res = r["result"]
                    n = ns.runs if mode == "fixed" else ns.repeat
                    b = bare_measure(run, mode, n, res["number"], ns.warmup_s)
                    agent_meds.append(res["latency_ms_median"])
                    bare_meds.append(b)
                    print(
                        f"  {runtime:11s} {mode:5s} round {rnd + 1}: agent "
                        f"{res['latency_ms_median']:.4f} ms (number={res['number']})  bare {b:.4f} ms"
                    )
                a_med, b_med = statistics.median(agent_meds), statistics.median(bare_meds)
                per_round = statistics.median(a / b for a, b in zip(agent_meds, bare_meds))
                print(
                    f"{runtime:11s} {mode:5s} median agent {a_med:.4f} ms | bare {b_med:.4f} ms | "
                    f"ratio agent/bare {a_med / b_med:.3f} (median of per-round ratios "
                    f"{per_round:.3f})"
                )
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
