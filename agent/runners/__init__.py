"""Inference runners: one small class per runtime, imported lazily by name.

A runner loads a model file, makes seeded random inputs matching the model's input shapes and
dtypes, and runs one inference per :meth:`Runner.run` call. Nothing else: timing lives in
``nnflash_agent.measure``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = [
    "RUNTIMES",
    "RUNTIME_FORMATS",
    "RuntimeUnavailable",
    "Runner",
    "make_runner",
    "random_array",
]

RUNTIMES = ("onnxruntime", "tflite")
RUNTIME_FORMATS = {"onnxruntime": "onnx", "tflite": "tflite"}


class RuntimeUnavailable(Exception):
    """The requested runtime is not installed on this device."""


def random_array(rng: Any, shape: List[int], dtype: Any) -> Any:
    """Seeded input data for one tensor: normal floats, small non-negative ints, random bools."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise ValueError(f"unsupported input dtype {dt}")


def concrete_shape(shape: Any) -> List[int]:
    """Dynamic dimensions (None, -1, symbolic names) become 1."""
    out = []
    for d in list(shape or []):
        out.append(int(d) if isinstance(d, (int,)) and d > 0 else 1)
    return out


class Runner:
    runtime = "runner"

    def __init__(self) -> None:
        self.version: Optional[str] = None
        self.threads: Optional[int] = None

    def import_runtime(self) -> None:
        """Import the runtime module (raise :class:`RuntimeUnavailable` if missing). Separate from
        :meth:`load` so that ``load_ms`` times model loading, not the module import."""

    def load(self, path: str, threads: Optional[int]) -> None:
        raise NotImplementedError

    def input_specs(self) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def prepare(self, seed: int) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def make_runner(runtime: str) -> Runner:
    if runtime == "onnxruntime":
        from nnflash_agent.runners.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner()
    if runtime == "tflite":
        from nnflash_agent.runners.tflite_runner import TfliteRunner

        return TfliteRunner()
    raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
