"""The agent's own wheel, built by pip from ``agent/pyproject.toml``.

``nnflash agent install`` ships the agent to a device as the wheel of the ``nnflash-agent``
distribution (``nnflash_agent-<version>-py3-none-any.whl``). It holds only the ``nnflash_agent``
package (its modules, the bundled self-test models and its own ``pyproject.toml``), so a device
never receives torch, the controller or any other host code. Its dependencies and extras
(``onnxruntime``, ``tflite``, ``tflite-legacy``, ``i2c``, ``usb``) are declared once, in that
``pyproject.toml``; :func:`agent_dependencies` reads them from there.

The build is reproducible: the sources are copied to a clean directory (no caches, no build
leftovers) and built with the pinned setuptools of the agent's ``[build-system]`` and a fixed
``SOURCE_DATE_EPOCH``, so the same sources give the same bytes and the same sha256. The installer
uses that hash to decide whether a device is up to date.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnflash.controller.errors import NnflashError
from nnflash_agent import __version__ as AGENT_VERSION
from nnflash_agent.fileio import atomic_write_bytes, sha256_file

__all__ = [
    "AGENT_DIST",
    "AGENT_VERSION",
    "AgentWheelError",
    "agent_dependencies",
    "agent_source_dir",
    "build_agent_wheel",
    "wheel_name",
]

AGENT_DIST = "nnflash_agent"
_SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip entry can carry
_SUFFIXES = (".py", ".onnx", ".tflite")


class AgentWheelError(NnflashError, RuntimeError):
    """The agent's wheel could not be built."""


def agent_source_dir() -> Path:
    """The ``nnflash_agent`` package directory this controller runs with (``agent/`` in a checkout)."""
    import nnflash_agent

    return Path(nnflash_agent.__file__).resolve().parent


def wheel_name(version: str = AGENT_VERSION) -> str:
    return f"{AGENT_DIST}-{version}-py3-none-any.whl"


def _load_toml(path: Path) -> Dict[str, object]:
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    return dict(tomllib.loads(path.read_text(encoding="utf-8")))


def agent_dependencies(source: Optional[Path] = None) -> Tuple[Tuple[str, ...], Dict[str, Tuple[str, ...]]]:
    """``(requirements, {extra: requirements})`` as the agent's ``pyproject.toml`` declares them."""
    src = source if source is not None else agent_source_dir()
    path = src / "pyproject.toml"
    if not path.is_file():
        raise AgentWheelError(f"{src} has no pyproject.toml: cannot tell the agent's dependencies")
    project = _load_toml(path).get("project")
    if not isinstance(project, dict):
        raise AgentWheelError(f"{path}: no [project] table")
    requires = tuple(str(r) for r in project.get("dependencies", []))
    extras = {str(k): tuple(str(r) for r in v) for k, v in dict(project.get("optional-dependencies", {})).items()}
    return requires, extras


def _copy_sources(src: Path, dest: Path) -> None:
    """Copy what the wheel is built from (modules, models, pyproject.toml) and nothing else."""
    if not (src / "cli.py").is_file() or not (src / "pyproject.toml").is_file():
        raise AgentWheelError(f"{src} does not look like the agent package (needs cli.py and pyproject.toml)")
    dest.mkdir(parents=True)
    shutil.copyfile(src / "pyproject.toml", dest / "pyproject.toml")
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or path.suffix not in _SUFFIXES:
            continue
        if any(part == "__pycache__" or part == "build" or part.endswith(".egg-info") for part in rel.parts):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        os.chmod(target, 0o644)


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors[0] if errors else (lines[-1] if lines else "pip failed")).removeprefix("ERROR: ")


def build_agent_wheel(out_dir: Path, *, source: Optional[Path] = None) -> Tuple[Path, str]:
    """Build the agent wheel into ``out_dir`` with pip; returns ``(path, sha256 hex)``.

    Overwrites a wheel of the same name only when its bytes differ. The build needs the pinned
    setuptools of ``agent/pyproject.toml`` from the package index or pip's cache."""
    src = source if source is not None else agent_source_dir()
    with tempfile.TemporaryDirectory(prefix="nnflash-agent-build-") as tmp:
        tree = Path(tmp) / "nnflash_agent"
        _copy_sources(src, tree)
        built = Path(tmp) / "dist"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check"]
        cmd += ["--no-input", "-w", str(built), str(tree)]
        env = dict(os.environ, SOURCE_DATE_EPOCH=_SOURCE_DATE_EPOCH, PIP_NO_INPUT="1", PYTHONHASHSEED="0")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wheels: List[Path] = sorted(built.glob("*.whl")) if built.is_dir() else []
        if res.returncode != 0 or len(wheels) != 1:
            raise AgentWheelError(f"cannot build the agent wheel from {src}: {_pip_error(res.stderr)}")
        blob = wheels[0].read_bytes()
        name = wheels[0].name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    if not path.exists() or path.read_bytes() != blob:
        atomic_write_bytes(path, blob)
    return path, sha256_file(path)
