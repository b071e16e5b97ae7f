"""`nnflash accel estimate`: the printed table, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nnflash.calibration.imc_model import NEUROSIM_V13_VGG8 as V13
from nnflash.controller.cli import cli
from nnflash.models.spec import preset


def invoke(args: list[str]):
    return CliRunner().invoke(cli, ["accel", "estimate", *args], catch_exceptions=False)


def test_json_has_totals_tiles_per_layer_and_breakdown() -> None:
    r = invoke(["--preset", "vgg8_cifar", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert obj["spec_id"] == preset("vgg8_cifar").spec_id
    assert obj["tiles"] == [1, 1, 2, 2, 4, 4, 32, 1] and obj["total_tiles"] == V13["tiles"]
    assert abs(obj["area_mm2"] - V13["area_mm2"]) / V13["area_mm2"] < 0.15
    assert abs(obj["energy_mj"] * 1e3 - V13["energy_uj"]) / V13["energy_uj"] < 0.15
    assert obj["latency_ms"] > 0 and len(obj["layers"]) == 8
    for part in ("array", "adc", "accumulation", "other", "interconnect"):
        assert obj["breakdown"]["area_mm2"][part] > 0
    assert set(obj["breakdown"]["energy_mj"]) >= {"adc", "accumulation", "array", "other"}
    assert set(obj["breakdown"]["latency_ms"]) >= {"adc", "buffer", "interconnect"}


def test_params_spec_files_and_accelerator_files(tmp_path) -> None:
    spec_path = tmp_path / "vgg.json"
    spec_path.write_text(preset("vgg8_cifar").to_json_line())
    base = json.loads(invoke([str(spec_path), "--json"]).output)
    four = json.loads(invoke([str(spec_path), "--param", "adc_bits=4", "--json"]).output)
    assert four["breakdown"]["area_mm2"]["adc"] < base["breakdown"]["area_mm2"]["adc"]
    accel = tmp_path / "accel.json"
    accel.write_text(json.dumps({"params": {"adc_bits": 4, "mode": "pipeline"}, "knobs": {"cell_bits": [1, 2]}}))
    piped = json.loads(invoke([str(spec_path), "--accelerator", str(accel), "--json"]).output)
    assert piped["mode"] == "pipeline" and piped["params"]["adc_bits"] == 4
    assert sum(piped["tiles"]) > sum(base["tiles"])
    text = invoke(["--preset", "vgg8_cifar"])
    assert text.exit_code == 0 and "47 tiles" in text.output and "novel" in text.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "vgg8_cifar", "--param", "adc_bitz=3"], "unknown parameter 'adc_bitz'"),
        (["--preset", "vgg8_cifar", "--param", "adc_bits=11"], "adc_bits must be an integer in [1, 10], got 11"),
        (["--preset", "vgg8_cifar", "--param", "adc_bits"], "--param: expected KEY=VALUE"),
        (["--preset", "vgg8_cifar", "--param", "mode=fast"], "mode must be one of layer, pipeline"),
        (["--preset", "vgg8_cifar", "--param", "subarray_rows=100"], "power of two"),
        (["--preset", "nope"], "unknown preset"),
        ([], "give SPEC.json or --preset"),
        (["/nonexistent/spec.json"], "no such file"),
        (["--preset", "vgg8_cifar", "--accelerator", "/nonexistent/a.json"], "no such file"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args: list[str], message: str) -> None:
    r = CliRunner().invoke(cli, ["accel", "estimate", *args])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnflash: error:") and message in lines[0]
