"""`nnflash search --accelerator`: network and IMC accelerator co-designed from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnflash.calibration.imc_model import ImcModel
from nnflash.controller.cli import cli
from nnflash.models.spec import parse_spec


def _accel(tmp_path: Path, obj: object) -> str:
    p = tmp_path / "accel.json"
    p.write_text(json.dumps(obj))
    return str(p)


def _run(args: list[str]) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, args)
    return r.exit_code, r.stdout, r.stderr


def test_codesign_under_an_area_limit_meets_it_and_reports_each_line(tmp_path: Path) -> None:
    knobs = {"subarray_rows": [64, 128, 256], "adc_bits": [3, 4, 5, 6], "cell_bits": [1, 2]}
    accel = _accel(tmp_path, {"knobs": knobs})
    out = tmp_path / "designs.jsonl"
    args = ["search", "--accelerator", accel, "--max-area-mm2", "20", "--top", "3", "--samples", "400", "--json"]
    code, stdout, stderr = _run(args + ["--out", str(out)])
    assert code == 0, stderr
    lines = [json.loads(x) for x in stdout.splitlines()]
    assert len(lines) == 3 and [json.loads(x) for x in out.read_text().splitlines()] == lines
    values = [r["objective"]["value"] for r in lines]
    assert values == sorted(values, reverse=True) and lines[0]["objective"]["name"] == "nn-degree"
    for r in lines:
        assert r["area_mm2"] <= 20 and r["margins"]["max_area_mm2"] == pytest.approx(1 - r["area_mm2"] / 20)
        assert r["deployment"]["knobs"]["adc_bits"] >= 5  # the default --min-adc-bits
        # the line's figures are the shipped model's own estimate of that network on that hardware
        spec = parse_spec(r["spec"])
        assert spec.spec_id == r["spec_id"]
        est = ImcModel.shipped(dict(r["deployment"]["knobs"])).estimate([spec])
        assert est["area_mm2"][0] == pytest.approx(r["area_mm2"], rel=1e-9)
        assert est["latency_ms"][0] == pytest.approx(r["latency_ms"], rel=1e-9)
    assert "pairs scored" in stderr
    # a tighter area limit never gives a better objective (same seed: the same sampled networks)
    tight = ["search", "--accelerator", accel, "--max-area-mm2", "8", "--samples", "400", "--json"]
    code, stdout, _ = _run(tight)
    assert code == 0 and json.loads(stdout)["area_mm2"] <= 8
    best_5bit = json.loads(stdout)["objective"]["value"]
    assert best_5bit <= values[0]
    # allowing coarser ADCs (--min-adc-bits 3) only adds hardware: never a worse objective
    code, stdout, _ = _run(tight + ["--min-adc-bits", "3"])
    assert code == 0 and json.loads(stdout)["objective"]["value"] >= best_5bit


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-area-mm2", "0.001"], "meets the limits"),
        (["--max-peak-memory-mb", "5"], "--max-peak-memory-mb does not apply with --accelerator"),
        (["--pareto"], "--pareto does not apply"),
        (["--export", "x"], "nnflash export"),
        (["--method", "shgo"], "--method does not apply"),
        (["--cost", "c.json"], "one of them"),
        (["--samples", "0"], "--samples: must be a positive integer"),
    ],
)
def test_bad_accelerator_searches_are_one_line_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    accel = _accel(tmp_path, {"knobs": {"adc_bits": [4, 5]}})
    code, _, stderr = _run(["search", "--accelerator", accel, "--samples", "50", *extra])
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_bad_accelerator_files(tmp_path: Path) -> None:
    for obj, message in (
        ({"knobs": {"adc_bits": []}}, "knobs.adc_bits"),
        ({"knobs": {"colour": [1]}}, "not a searchable knob"),
        ({"hardware": {}}, "unknown field"),
    ):
        code, _, stderr = _run(["search", "--accelerator", _accel(tmp_path, obj)])
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    code, _, stderr = _run(["search", "--accelerator", str(tmp_path / "missing.json")])
    assert code == 2 and "no such file" in stderr
    (tmp_path / "bad.json").write_text("{nope")
    code, _, stderr = _run(["search", "--accelerator", str(tmp_path / "bad.json")])
    assert code == 2 and "not a readable JSON file" in stderr
    code, _, stderr = _run(["search", "--cost", "c.json", "--min-adc-bits", "4"])
    assert code == 2 and "apply with --accelerator only" in stderr
