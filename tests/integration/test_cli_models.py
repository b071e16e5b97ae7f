"""`nnflash metrics|space|generate|ldi` as a user runs them: real subprocesses, exit codes, stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "examples" / "dense_reference.json"


def nnflash(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "nnflash.controller.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_metrics_json_on_the_reference_spec():
    out = json.loads(nnflash("metrics", str(REFERENCE), "--json", check=True).stdout)
    assert out["family"] == "dense" and len(out["spec_id"]) == 12
    assert out["nn_mass"] == pytest.approx(526.106, abs=1e-3)
    assert out["nn_density"] == pytest.approx([0.204545, 0.204545, 0.162760], abs=1e-6)
    assert out["params"] > 0 and out["macs"] > 0 and out["nn_degree"] > 0


def test_metrics_table_and_preset():
    table = nnflash("metrics", str(REFERENCE), check=True).stdout
    assert "NN-Mass" in table and "526.106" in table
    out = json.loads(nnflash("metrics", "--preset", "mobilenet_v2", "--width-mult", "1.0", "--json", check=True).stdout)
    assert out["params"] == 3_504_872 and out["family"] == "mobilenetv2"


def test_space_count_sample_generate_round_trip(tmp_path):
    count = json.loads(nnflash("space", "count", "--space", "flash", "--json", check=True).stdout)
    assert count["space"] == "flash" and count["configurations"] >= 63_000_000_000
    sample = tmp_path / "s.jsonl"
    nnflash("space", "sample", "--n", "4", "--seed", "9", "--out", str(sample), check=True)
    gen = tmp_path / "g.jsonl"
    nnflash(
        "generate",
        "--target-mass",
        "300",
        "--tolerance",
        "0.02",
        "--n",
        "6",
        "--max-params",
        "3000000",
        "--seed",
        "1",
        "--out",
        str(gen),
        check=True,
    )
    for path, n in ((sample, 4), (gen, 6)):
        lines = path.read_text().splitlines()
        assert len(lines) == n
        one = tmp_path / "one.json"
        one.write_text(lines[0])
        m = json.loads(nnflash("metrics", str(one), "--json", check=True).stdout)
        assert m["spec_id"] == json.loads(lines[0])["spec_id"]
        if path == gen:
            assert abs(m["nn_mass"] - 300) <= 6 and m["params"] <= 3_000_000


def test_ldi_json(tmp_path):
    spec = tmp_path / "small.json"
    spec.write_text(
        '{"family":"dense","cells":[{"depth":4,"width":8,"tc":4},{"depth":3,"width":16,"tc":8}],'
        '"input_shape":[3,16,16]}'
    )
    out = json.loads(nnflash("ldi", str(spec), "--batch", "2", "--json", check=True).stdout)
    assert out["ldi_mean"] > 0 and out["ldi_std"] >= 0 and out["layers"] == 8
    assert len(out["per_layer"]) == out["layers"]


BAD_SPECS = {
    "zero_depth": ('{"family":"dense","cells":[{"depth":0,"width":8,"tc":1}]}', "cells[0].depth"),
    "negative_width": ('{"family":"dense","cells":[{"depth":3,"width":-8,"tc":1}]}', "cells[0].width"),
    "negative_tc": ('{"family":"dense","cells":[{"depth":3,"width":8,"tc":-2}]}', "cells[0].tc"),
    "unknown_family": ('{"family":"transformer","cells":[]}', "unknown family"),
    "non_integer": ('{"family":"dense","cells":[{"depth":3.5,"width":8,"tc":1}]}', "must be an integer"),
    "malformed_json": ('{"family": "dense", "cells": [', "malformed JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_files_one_line_exit_2(tmp_path, case):
    text, needle = BAD_SPECS[case]
    f = tmp_path / "bad.json"
    f.write_text(text)
    p = nnflash("metrics", str(f))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr


def test_missing_file_and_bad_options():
    p = nnflash("metrics", "/nonexistent/spec.json")
    assert p.returncode == 2 and "no such file" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = nnflash("space", "sample", "--n", "0", "--out", "/tmp/x.jsonl")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    p = nnflash("generate", "--target-mass", "99999", "--n", "3", "--out", "/tmp/x.jsonl")
    assert p.returncode == 2 and "outside" in p.stderr


def test_debug_shows_the_traceback(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"family":"dense","cells":[{"depth":0,"width":8,"tc":1}]}')
    p = nnflash("--debug", "metrics", str(f))
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_failed_generate_keeps_existing_output(tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    p = nnflash("generate", "--target-mass", "99999", "--n", "3", "--out", str(out))
    assert p.returncode == 2 and out.read_text() == "precious\n"
