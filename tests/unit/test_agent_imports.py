"""The agent stays light: stdlib + numpy + psutil + the runtime it uses, imported lazily.

Never torch, never the host packages (nnflash.*, or the old top-level names), and Python 3.9 syntax.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"
AGENT_FILES = sorted(p for p in AGENT.rglob("*.py") if not {"build", "dist"} & set(p.relative_to(AGENT).parts))

THIRD_PARTY_ALLOWED = {"numpy", "psutil", "onnxruntime", "ai_edge_litert", "tflite_runtime"}
# Hardware drivers: only inside the meter that needs them.
DRIVER_MODULES = {"smbus2": "agent/energy/ina.py", "serial": "agent/energy/um25c.py"}
STDLIB = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
needs_stdlib_list = pytest.mark.skipif(STDLIB is None, reason="needs sys.stdlib_module_names")

FORBIDDEN = {"torch", "nnflash", "controller", "models", "calibration", "onnx", "scipy", "tensorflow"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node


def _module_level_nodes(path: Path):
    tree = ast.parse(path.read_text())
    return {id(n) for n in tree.body}


def test_agent_files_exist():
    assert len(AGENT_FILES) >= 15


@needs_stdlib_list
@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_allowed(path):
    rel = str(path.relative_to(ROOT))
    top_level = _module_level_nodes(path)
    for name, node in _imports(path):
        assert name not in FORBIDDEN, f"{rel} imports {name}"
        if name == "nnflash_agent" or name == "__future__" or name in STDLIB:
            continue
        if name in DRIVER_MODULES:
            assert rel == DRIVER_MODULES[name], f"{rel} imports driver {name}"
            assert id(node) not in top_level, f"{rel} imports {name} at module level"
            continue
        assert name in THIRD_PARTY_ALLOWED, f"{rel} imports {name}"
        # numpy and runtimes must be lazy (inside functions); psutil too, except nowhere at top.
        assert id(node) not in top_level, f"{rel} imports {name} at module level (keep it lazy)"


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python39_syntax(path):
    src = path.read_text()
    ast.parse(src, feature_version=(3, 9))
    assert "from __future__ import annotations" in src or not src.strip() or "def " not in src


def _loaded_after(code: str) -> set:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@needs_stdlib_list
def test_protocol_is_stdlib_only():
    mods = _loaded_after("import nnflash_agent.protocol") - _loaded_after("pass")
    roots = {m.split(".")[0] for m in mods}
    non_std = {r for r in roots if r not in STDLIB and r != "nnflash_agent"}
    assert non_std == set(), non_std


def test_importing_every_agent_module_loads_no_heavy_package():
    names = []
    for p in AGENT_FILES:
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue  # running it is the CLI
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(["nnflash_agent", *parts[1:]]))
    code = "\n".join(f"import {n}" for n in names)
    mods = _loaded_after(code)
    roots = {m.split(".")[0] for m in mods}
    assert not roots & FORBIDDEN, roots & FORBIDDEN
    # Runtimes and numpy are loaded only when a measurement runs.
    for lazy in ("numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "smbus2", "serial"):
        assert lazy not in roots, f"{lazy} imported at agent import time"


def test_serving_process_handles_hello_without_numpy_or_runtime():
    code = (
        "import tempfile, os\n"
        "from nnflash_agent.serve import Agent\n"
        "d = tempfile.mkdtemp()\n"
        "a = Agent(os.path.join(d, 's'), os.path.join(d, 'j'))\n"
        'r, _ = a.handle_line(b\'{"v":2,"id":"a","verb":"hello"}\')\n'
        "assert r['status'] == 'ok', r\n"
        'r, _ = a.handle_line(b\'{"v":2,"id":"b","verb":"info"}\')\n'
        "assert r['status'] == 'ok', r\n"
    )
    roots = {m.split(".")[0] for m in _loaded_after(code)}
    for heavy in ("numpy", "onnxruntime", "ai_edge_litert", "torch"):
        assert heavy not in roots
    # memory: psutil (2.6 MB), OpenSSL via hashlib (3.3 MB) and inspect (2 MB) stay out of an idle
    # agent on Linux; device facts come from /proc and sysfs, artifacts hash with the built-in sha256
    if sys.platform.startswith("linux"):
        for costly in ("psutil", "_hashlib", "inspect"):
            assert costly not in roots, f"{costly} loaded by an idle serving agent"
