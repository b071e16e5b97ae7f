"""Direct onnxruntime timing on this machine, **bypassing the agent**: the methodology of
``benchmarks/calibration_accuracy.py`` and of ``tests/integration/test_cal_measured.py``.

This is not how nnflash measures. The product path is the agent (``nnflash profile``, ``nnflash
calibrate``: the counting rule of ``agent/measure.py``, results in the database); this module loads
models into onnxruntime in this process, with its own counting rule (below), so that a benchmark can
time hundreds of models interleaved and cache the figures. It lives with the benchmarks, outside the
cost-model package, and nothing in ``nnflash`` imports it.

Counting rule
-------------
Every model is exported to ONNX (``nnflash.models.export.export_spec``; a plain ``torch.onnx.export`` with
the TorchScript exporter, opset 17, when that module is unavailable) and loaded into an onnxruntime
CPU session with ``intra_op_num_threads = threads``, ``inter_op_num_threads = 1`` and sequential
execution. The input is one seeded standard-normal batch, reused for every call.

Timing is *interleaved*: models are loaded ``chunk`` (30) at a time and each chunk is visited
``rounds`` times in a shuffled order; on each visit a model gets ``warmup`` untimed calls, then
single calls timed with ``time.perf_counter_ns`` until at least ``min_runs`` calls *and*
``min_time_s`` seconds have been timed; the visit's figure is the **median** of those calls
(robust to single slow calls). A model's latency is the **minimum over its visits** of those
medians (``aggregate="min"``; ``"median"`` is available): on a shared machine a neighbour's burst
can slow a whole visit by 2x or more, always upwards, and the least-disturbed visit is the best
estimate of the model's latency on a quiet device. Measured on the 2-core development machine (40
models, 6 visits, split into two halves of 3 visits): the halves agree within 1.5% (median) and
3.6% (90th percentile) with ``min``, 1.9% and 7.5% with ``median``.

Loading only ``chunk`` sessions at a time matters: with 250 sessions loaded at once, the same
models ran 2-9x slower and erratically (memory effects), so chunks are timed one after another.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def export_onnx(spec: Any, out_dir: str | Path) -> Path:
    """``out_dir/<spec_id>.onnx`` for ``spec`` (cached by the exporter when it supports it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from nnflash.models.export import export_spec
    except ImportError:  # pragma: no cover - the exporter module is optional here
        return _export_plain(spec, out)
    return Path(export_spec(spec, "onnx", out).path)


def _export_plain(spec: Any, out: Path) -> Path:  # pragma: no cover - fallback
    path = out / f"{spec.spec_id}.onnx"
    if not path.exists():
        import torch

        from nnflash.models.builder import build_module, example_input

        module = build_module(spec).eval()
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(
            module,
            (example_input(spec),),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
        )
        tmp.replace(path)
    return path


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _feed(sess: Any, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def time_onnx_visits(
    paths: Mapping[str, str | Path],
    *,
    threads: int = 1,
    rounds: int = 7,
    warmup: int = 2,
    min_runs: int = 7,
    min_time_s: float = 0.04,
    seed: int = 0,
    chunk: int = 30,
    progress: Any = None,
) -> dict[str, list[float]]:
    """Every visit figure (ms) of every model in ``paths`` (``{key: onnx path}``), timed
    interleaved in chunks of ``chunk`` models (see the module docstring)."""
    keys = list(paths)
    visits: dict[str, list[float]] = {k: [] for k in keys}
    rng = np.random.default_rng(seed)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        sessions = {k: _session(Path(paths[k]), threads) for k in part}
        feeds = {k: _feed(sessions[k], seed) for k in part}
        for _ in range(rounds):
            for j in rng.permutation(len(part)):
                key = part[int(j)]
                sess, feed = sessions[key], feeds[key]
                for _ in range(warmup):
                    sess.run(None, feed)
                samples: list[int] = []
                t_start = time.perf_counter_ns()
                while len(samples) < min_runs or time.perf_counter_ns() - t_start < min_time_s * 1e9:
                    t0 = time.perf_counter_ns()
                    sess.run(None, feed)
                    samples.append(time.perf_counter_ns() - t0)
                visits[key].append(float(np.median(samples)) / 1e6)
        del sessions, feeds
        if progress is not None:
            progress(min(start + chunk, len(keys)), len(keys))
    return visits


def aggregate_visits(visits: Sequence[float], how: str = "min") -> float:
    """A model's latency from its visit figures: ``min`` (default) or ``median``."""
    if how == "min":
        return float(np.min(visits))
    if how == "median":
        return float(np.median(visits))
    raise ValueError(f"aggregate: must be min or median, got {how!r}")


def time_onnx(paths: Mapping[str, str | Path], *, aggregate: str = "min", **kwargs: Any) -> dict[str, float]:
    """Latency in ms of every model in ``paths``: :func:`time_onnx_visits` then
    :func:`aggregate_visits`."""
    return {k: aggregate_visits(v, aggregate) for k, v in time_onnx_visits(paths, **kwargs).items()}


def measure_specs(specs: Sequence[Any], out_dir: str | Path, *, threads: int = 1, **kwargs: Any) -> dict[str, float]:
    """Export and time ``specs``; ``{spec_id: latency_ms}``."""
    paths = {s.spec_id: export_onnx(s, out_dir) for s in specs}
    return time_onnx(paths, threads=threads, **kwargs)
