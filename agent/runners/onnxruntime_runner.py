"""onnxruntime runner (CPU execution provider).

One inference = ``session.run(None, feed)`` with the feed built once beforehand. ``threads`` sets
``intra_op_num_threads`` (None: onnxruntime's default, one per physical core); inter-op parallelism
is off (sequential execution mode), so ``threads`` is the number of compute threads.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from nnflash_agent.runners import Runner, RuntimeUnavailable, concrete_shape, random_array

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self) -> None:
        super().__init__()
        self._ort: Any = None
        self._sess: Any = None
        self._feed: Dict[str, Any] = {}

    def import_runtime(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable(f"onnxruntime is not installed ({exc})") from None
        self._ort = ort
        self.version = ort.__version__

    def load(self, path: str, threads: Optional[int]) -> None:
        if self._ort is None:
            self.import_runtime()
        ort = self._ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        self.threads = threads
        self._sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

    def input_specs(self) -> List[Dict[str, Any]]:
        specs = []
        for inp in self._sess.get_inputs():
            dtype = _ORT_TYPES.get(inp.type)
            if dtype is None:
                raise ValueError(f"input {inp.name!r} has unsupported type {inp.type}")
            specs.append({"name": inp.name, "shape": concrete_shape(inp.shape), "dtype": dtype})
        return specs

    def prepare(self, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self._feed = {s["name"]: random_array(rng, s["shape"], s["dtype"]) for s in self.input_specs()}

    def run(self) -> None:
        self._sess.run(None, self._feed)

    def close(self) -> None:
        self._sess = None
        self._feed = {}
