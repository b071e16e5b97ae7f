"""nnflash-agent CLI: bad input gives one clear stderr line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nnflash_agent import __version__
from nnflash_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["measure"],
        ["measure", "/no/such/model.onnx", "--runtime", "onnxruntime"],
        ["measure", "x.onnx", "--runtime", "tvm"],
        ["measure", __file__, "--runtime", "onnxruntime"],  # wrong extension
        ["measure", __file__, "--runtime", "onnxruntime", "--threads", "many"],
        ["info", "--bogus"],
    ],
)
def test_usage_errors(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnflash-agent: error:") and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_option_values(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    for extra in (["--threads", "0"], ["--affinity", "a,b"], ["--energy", "zap"], ["--energy-option", "novalue"]):
        assert main(["measure", str(model), "--runtime", "onnxruntime", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.strip() == f"nnflash-agent {__version__}"


def test_info_json(capsys):
    import json

    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"facts", "state"}


def test_info_text(capsys):
    assert main(["info"]) == 0
    assert "runtimes" in capsys.readouterr().out


def test_module_entry_point_runs_as_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "nnflash_agent.cli", "frobnicate"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1


def test_corrupt_model_file_measure_fails_cleanly(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x08\x07garbage-not-a-model" * 10)
    out = subprocess.run(
        [sys.executable, "-m", "nnflash_agent.cli", "measure", str(model), "--runtime", "onnxruntime"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "runtime_error" in out.stderr and "Traceback" not in out.stderr
