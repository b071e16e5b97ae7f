"""The two distributions install under the project's own names, and nothing generic.

A fresh venv gets ``nnflash-agent`` (``agent/``) and ``nnflash`` (the repository root) built by pip
from this checkout, without their dependencies (those come from the development venv through
``PYTHONPATH``, whose directories are not site directories: the editable ``.pth`` files there are not
read, so only the fresh venv provides ``nnflash`` and ``nnflash_agent``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nnflash.controller.agent_wheel import build_agent_wheel

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pkg")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    agent_wheel, _ = build_agent_wheel(work / "wheels")  # what `nnflash agent install` ships
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check", str(agent_wheel), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.fail(f"pip install failed: {res.stderr[-2000:]}")
    return venv


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    deps = sysconfig.get_paths()["purelib"]  # the development venv's packages (click, numpy, ...)
    env = dict(os.environ, PYTHONPATH=deps)
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_only_the_project_names_are_installed(fresh_venv: Path, tmp_path: Path) -> None:
    py = str(fresh_venv / "bin" / "python")
    for generic in ("models", "controller", "calibration", "agent"):
        p = _run(fresh_venv, py, "-c", f"import {generic}", cwd=tmp_path)
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, generic
    p = _run(
        fresh_venv,
        py,
        "-c",
        "import nnflash.controller.cli, nnflash_agent.cli, nnflash, sys; print(nnflash.__file__)",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert str(fresh_venv) in p.stdout  # the fresh venv's copy, not the checkout
    site = Path(p.stdout.strip()).parent.parent
    top = {d.name for d in site.iterdir() if d.is_dir() and not d.name.endswith(".dist-info")}
    assert {"nnflash", "nnflash_agent"} <= top
    assert not top & {"models", "controller", "calibration", "agent"}
    # the host distribution does not ship the agent's files a second time
    record = next(site.glob("nnflash-*.dist-info")) / "RECORD"
    assert not [ln for ln in record.read_text().splitlines() if ln.startswith("nnflash_agent/")]


def test_console_scripts_start(fresh_venv: Path, tmp_path: Path) -> None:
    for script in ("nnflash", "nnflash-agent"):
        p = _run(fresh_venv, str(fresh_venv / "bin" / script), "--help", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert "usage" in p.stdout.lower()


def test_agent_wheel_is_byte_identical_from_a_fresh_copy(tmp_path: Path) -> None:
    """Another checkout (other path, other file times) builds the same bytes."""
    _, sha = build_agent_wheel(tmp_path / "a")
    copy = tmp_path / "elsewhere" / "agent"
    shutil.copytree(ROOT / "agent", copy, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    for path in copy.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    _, sha_copy = build_agent_wheel(tmp_path / "b", source=copy)
    assert sha == sha_copy
