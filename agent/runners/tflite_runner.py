"""TFLite runner: ``ai_edge_litert.interpreter`` (preferred) or ``tflite_runtime.interpreter``.

Inputs are written into the interpreter's tensors once (``set_tensor``) before timing; one inference
is one ``invoke()``. ``threads`` is the interpreter's ``num_threads`` (None: the runtime's default).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from nnflash_agent.runners import Runner, RuntimeUnavailable, concrete_shape, random_array


def import_interpreter() -> Tuple[Any, str, str]:
    """(Interpreter class, module name, version) of the first TFLite runtime found."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        from nnflash_agent.telemetry import runtime_versions

        return Interpreter, "ai_edge_litert", runtime_versions().get("ai_edge_litert") or "?"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

        version = getattr(tflite_runtime, "__version__", None) or "?"
        return Interpreter, "tflite_runtime", version
    except ImportError:
        raise RuntimeUnavailable("no TFLite runtime: install ai-edge-litert (or tflite-runtime)") from None


class TfliteRunner(Runner):
    runtime = "tflite"

    def __init__(self) -> None:
        super().__init__()
        self._interp: Any = None
        self._interpreter_cls: Any = None
        self.module: Optional[str] = None

    def import_runtime(self) -> None:
        interpreter_cls, module, version = import_interpreter()
        self._interpreter_cls = interpreter_cls
        self.module = module
        self.version = f"{module} {version}"

    def load(self, path: str, threads: Optional[int]) -> None:
        if self._interpreter_cls is None:
            self.import_runtime()
        interpreter_cls = self._interpreter_cls
        self.threads = threads
        kwargs: Dict[str, Any] = {"model_path": path}
        if threads is not None:
            kwargs["num_threads"] = int(threads)
        self._interp = interpreter_cls(**kwargs)
        self._interp.allocate_tensors()

    def input_specs(self) -> List[Dict[str, Any]]:
        import numpy as np

        specs = []
        for d in self._interp.get_input_details():
            specs.append(
                {
                    "name": d["name"],
                    "index": int(d["index"]),
                    "shape": concrete_shape([int(x) for x in d["shape"]]),
                    "dtype": np.dtype(d["dtype"]).name,
                }
            )
        return specs

    def prepare(self, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        for s in self.input_specs():
            self._interp.set_tensor(s["index"], random_array(rng, s["shape"], s["dtype"]))

    def run(self) -> None:
        self._interp.invoke()

    def close(self) -> None:
        self._interp = None
