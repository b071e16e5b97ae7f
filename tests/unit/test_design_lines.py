"""Every command that reads SPECS.jsonl also reads the design lines `nnflash search` writes (an object
holding the spec under ``"spec"``): through ``models.spec.load_specs_jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnflash.calibration import RooflineLatencyModel
from nnflash.calibration.synthetic import synthetic_latency
from nnflash.controller.cli import cli
from nnflash.models.errors import SpecError
from nnflash.models.space import get_space
from nnflash.models.spec import load_specs_jsonl

SPECS = get_space("flash").sample(6, seed=2)


def _design(spec, **extra) -> str:
    obj = {"spec": json.loads(spec.canonical_json()), "spec_id": spec.spec_id, "objective": {"name": "nn-degree"}}
    return json.dumps({**obj, **extra})


def test_design_lines_and_spec_lines_mix(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(_design(SPECS[0]) + "\n\n" + SPECS[1].to_json_line() + "\n" + _design(SPECS[2], accuracy=None) + "\n")
    assert [s.spec_id for s in load_specs_jsonl(p)] == [SPECS[0].spec_id, SPECS[1].spec_id, SPECS[2].spec_id]


@pytest.mark.parametrize(
    "line, msg",
    [
        (lambda: _design(SPECS[0], spec_id=SPECS[1].spec_id), "does not match the design's spec"),
        (lambda: json.dumps({"spec": [1, 2], "spec_id": "x"}), "a design's spec must be a JSON object"),
        (lambda: json.dumps({"spec": {"family": "dense"}}), "d.jsonl:2: "),
    ],
)
def test_bad_design_lines_name_the_line(tmp_path: Path, line, msg: str) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(SPECS[0].to_json_line() + "\n" + line() + "\n")
    with pytest.raises(SpecError, match=msg) as e:
        load_specs_jsonl(p)
    assert "d.jsonl:2: " in str(e.value)


def test_predict_reads_designs(tmp_path: Path) -> None:
    cost = RooflineLatencyModel().fit(SPECS, synthetic_latency(SPECS)).save(tmp_path / "c.json")
    p = tmp_path / "d.jsonl"
    p.write_text("".join(_design(s) + "\n" for s in SPECS))
    res = CliRunner().invoke(cli, ["predict", "--cost", str(cost), str(p), "--json"])
    assert res.exit_code == 0, res.output
    assert [json.loads(ln)["spec_id"] for ln in res.output.splitlines()] == [s.spec_id for s in SPECS]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_design(SPECS[0], spec_id="000000000000") + "\n")
    res = CliRunner().invoke(cli, ["predict", "--cost", str(cost), str(bad)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "bad.jsonl:1: spec_id" in res.output
