"""Helpers shared by the agent benchmarks (not part of the agent package)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from nnflash_agent import protocol as P

ROOT = Path(__file__).resolve().parents[1]


def make_onnx_mlp(path: Path, width: int = 512, depth: int = 3, seed: int = 0) -> Path:
    """An MLP built with the onnx helper API: x[1, width] -> depth x (MatMul, Relu) -> y."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype("float32")
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_tflite_mlp(path: Path, width: int = 512, depth: int = 3) -> Optional[Path]:
    """The same MLP as TFLite via torch + litert-torch (in a subprocess); None if unavailable."""
    code = (
        "import sys, torch, litert_torch\n"
        "w, d = int(sys.argv[2]), int(sys.argv[3])\n"
        "torch.manual_seed(0)\n"
        "layers = []\n"
        "for _ in range(d): layers += [torch.nn.Linear(w, w, bias=False), torch.nn.ReLU()]\n"
        "m = torch.nn.Sequential(*layers).eval()\n"
        "litert_torch.convert(m, (torch.randn(1, w),)).export(sys.argv[1])\n"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", code, str(path), str(width), str(depth)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return None
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Agent:
    """``nnflash-agent serve`` as a subprocess."""

    def __init__(self, tmp: Path, extra: tuple = (), command: Optional[list] = None) -> None:
        """``command`` replaces ``serve ...`` (e.g. ``["connect", "--socket", path]``)."""
        self.store = tmp / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.t_spawn = time.perf_counter()
        args = command or ["serve", "--store", str(self.store), "--journal", str(tmp / "journal.jsonl"), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nnflash_agent.cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.n = 0

    def ask(self, verb: str, args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        req = {"v": P.PROTOCOL_VERSION, "id": f"b{self.n}", "verb": verb, "args": args or {}}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("agent exited")
        return json.loads(line)

    def put(self, path: Path) -> Dict[str, str]:
        sha = sha256(path)
        fmt = path.suffix.lstrip(".")
        (self.store / f"{sha}.{fmt}").write_bytes(path.read_bytes())
        return {"sha256": sha, "format": fmt}

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        try:
            self.ask("bye")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
