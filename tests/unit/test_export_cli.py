"""`nnflash export` goes through ``models.export.export_many``: each spec's torch module is built once
for all the formats, and failures stay per (spec, format). The exporter itself is faked here (the
real one is tested in test_export.py and tests/integration/test_export_tflite.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import nnflash.models.builder
import nnflash.models.export
from nnflash.controller.cli import cli
from nnflash.models.errors import ExportError
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(3, seed=4)


@pytest.fixture
def fake_toolchain(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Counts builds and exports; ``fail`` maps a spec id to the exception its build raises, and
    ``(spec id, format)`` to the one its export raises."""
    log: dict[str, Any] = {"built": [], "exported": [], "fail": {}}

    def build(spec: Any) -> Any:
        log["built"].append(spec.spec_id)
        if spec.spec_id in log["fail"]:
            raise log["fail"][spec.spec_id]
        return spec.spec_id

    def export_module(module: Any, input_shape: Any, fmt: str, path: Any, **kw: Any) -> tuple[float, float]:
        if (module, fmt) in log["fail"]:
            raise log["fail"][(module, fmt)]
        log["exported"].append((module, fmt, kw.get("quantize")))
        Path(path).write_bytes(f"{module}.{fmt}".encode())
        return 0.0, 1e-7

    monkeypatch.setattr(nnflash.models.builder, "build_module", build)
    monkeypatch.setattr(nnflash.models.export, "export_module", export_module)
    return log


def _export(tmp_path: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    specs = tmp_path / "specs.jsonl"
    specs.write_text("".join(s.to_json_line() + "\n" for s in SPECS))
    res = CliRunner().invoke(cli, ["export", str(specs), "--out", str(tmp_path / "out"), "--json", *args])
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return res.exit_code, rows, res.stderr


def test_export_builds_each_module_once_for_all_formats(tmp_path: Path, fake_toolchain: dict) -> None:
    code, rows, err = _export(tmp_path, "--format", "onnx,tflite", "--int8")
    assert code == 0, err
    ids = [s.spec_id for s in SPECS]
    assert fake_toolchain["built"] == ids  # once per spec, not once per format
    assert [(r["spec_id"], r["format"], r["quantization"]) for r in rows] == [
        (sid, fmt, q) for sid in ids for fmt, q in (("onnx", None), ("tflite", "int8"))
    ]
    assert all(r["status"] == "ok" and not r["cached"] and Path(r["path"]).exists() for r in rows)
    assert set(rows[0]) == {"spec_id", "format", "quantization", "path", "sha256", "size", "cached"} | {
        "max_rel_err",
        "status",
    }
    assert "exported 6 artifact(s)" in err and "0 failed" in err
    code, again, _ = _export(tmp_path, "--format", "onnx,tflite", "--int8")
    assert code == 0 and all(r["cached"] for r in again) and fake_toolchain["built"] == ids  # cached: no build


def test_export_failures_stay_per_spec_and_format(tmp_path: Path, fake_toolchain: dict) -> None:
    bad_build, bad_tflite, good = (s.spec_id for s in SPECS)
    fake_toolchain["fail"][bad_build] = RuntimeError("cannot build\nsecond line")
    fake_toolchain["fail"][(bad_tflite, "tflite")] = ExportError("tflite export failed: boom\ndetails")
    code, rows, err = _export(tmp_path, "--format", "onnx,tflite")
    assert code == 1
    status = {(r["spec_id"], r["format"]): (r["status"], r.get("error")) for r in rows}
    assert status == {
        (bad_build, "onnx"): ("failed", "cannot build"),
        (bad_build, "tflite"): ("failed", "cannot build"),
        (bad_tflite, "onnx"): ("ok", None),
        (bad_tflite, "tflite"): ("failed", "tflite export failed: boom"),
        (good, "onnx"): ("ok", None),
        (good, "tflite"): ("ok", None),
    }
    assert f"export of {bad_tflite} to tflite failed:" in err
    assert "exported 3 artifact(s)" in err and "3 failed" in err


def test_export_option_errors(tmp_path: Path) -> None:
    code, _, err = _export(tmp_path, "--format", "onnx,coreml")
    assert code == 2 and "--format: unknown format 'coreml'" in err
    code, _, err = _export(tmp_path, "--int8")
    assert code == 2 and "--int8 applies to the tflite format only" in err
