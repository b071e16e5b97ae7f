"""`nnflash train` and the --dataset option of `space sample`/`generate`: JSON lines, one-line errors."""

from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnflash.controller.cli import cli
from nnflash.models.spec import Cell, DenseSpec


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest, and keeps the test quick on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_idx(directory: Path, n_train: int = 5300, n_test: int = 60, side: int = 28) -> None:
    """A small MNIST-format dataset (just over the 5,000 validation images carved by default): class k
    brightens a band of rows."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
        for k in range(10):
            x[y == k, 2 * k + 4 : 2 * k + 6, :] += 150
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 0x803, n, side, side) + x.tobytes())
        )
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x801, n) + y.tobytes())
        )


TINY_TOML = """base = "quick"
train_size = 128
val_size = 40
epochs = 1
batch_size = 64
"""

SPEC = DenseSpec((Cell(2, 4, 0), Cell(2, 4, 1)), input_shape=(1, 28, 28), num_classes=10)


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    write_idx(data)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    other = DenseSpec((Cell(2, 4, 1), Cell(2, 8, 0)), input_shape=(1, 28, 28), num_classes=10)
    lines = [SPEC.to_json_line(), json.dumps({"spec": json.loads(other.to_json_line()), "score": 1.0})]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def base(work: Path) -> list[str]:
    return [
        "train",
        str(work / "s.jsonl"),
        "--dataset",
        "mnist",
        "--data-dir",
        str(work / "data"),
        "--protocol",
        str(work / "tiny.toml"),
        "--torch-device",
        "cpu",
        "--db",
        str(work / "r.db"),
    ]


def test_json_lines_and_rerun(work: Path) -> None:
    r = invoke([*base(work), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    for row in rows:
        assert {"spec_id", "status", "val_accuracy", "test_accuracy"} <= set(row)
        assert row["status"] == "ok", row["error"]
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
    assert "estimated" in r.stderr
    r2 = invoke([*base(work), "--json"])
    rows2 = [json.loads(line) for line in r2.stdout.splitlines() if line.startswith("{")]
    assert [x["skipped"] for x in rows2] == ["done", "done"]
    assert [x["test_accuracy"] for x in rows2] == [x["test_accuracy"] for x in rows]


@pytest.mark.parametrize(
    "change, message",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--data-dir", "/nonexistent-dir"], "is not a directory"),
        (["--protocol", "nope.toml"], "no such file"),
        (["--protocol", "BAD"], "unknown preset"),
        (["--seed", "-1"], "--seed"),
        (["--workers", "0"], "--workers"),
        (["--torch-device", "tpu"], "torch device"),
        (["--ray-address", "auto"], "only with --executor ray"),
    ],
)
def test_bad_inputs_are_one_line_errors(work: Path, change: list[str], message: str) -> None:
    args = base(work)
    for i in range(0, len(change), 2):
        if change[i] in args:
            args[args.index(change[i]) + 1] = change[i + 1]
        else:
            args += change[i : i + 2]
    r = invoke(args)
    assert r.exit_code == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnflash: error:") and message in err[0], r.stderr


def test_missing_files_bad_protocol_and_shape_mismatch(work: Path) -> None:
    (work / "data" / "t10k-labels-idx1-ubyte.gz").unlink()
    r = invoke(base(work))
    assert r.exit_code == 2 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    write_idx(work / "data")
    (work / "tiny.toml").write_text("epochs = 'many'\n")
    r = invoke(base(work))
    assert r.exit_code == 2 and "epochs: must be an integer" in r.stderr
    (work / "tiny.toml").write_text(TINY_TOML)
    cifar_spec = DenseSpec((Cell(2, 4, 0),), input_shape=(3, 32, 32), num_classes=10)
    (work / "s.jsonl").write_text(cifar_spec.to_json_line() + "\n")
    r = invoke(base(work))
    assert r.exit_code == 2 and "does not fit dataset mnist" in r.stderr
    (work / "s.jsonl").write_text("{not json\n")
    r = invoke(base(work))
    assert r.exit_code == 2 and "s.jsonl:1: malformed JSON" in r.stderr


def test_ray_missing_says_how_to_install(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = invoke([*base(work), "--executor", "ray"])
    assert r.exit_code == 2 and "pip install 'nnflash[cluster]'" in r.stderr


def test_space_sample_and_generate_take_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    r = invoke(["space", "sample", "--dataset", "fashion-mnist", "--n", "2", "--out", str(out)])
    assert r.exit_code == 0
    specs = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(s["input_shape"] == [1, 28, 28] and s["num_classes"] == 10 for s in specs)
    r = invoke(["space", "sample", "--dataset", "cifar100", "--n", "1", "--out", str(out)])
    spec = json.loads(out.read_text())
    assert r.exit_code == 0 and spec["input_shape"] == [3, 32, 32] and spec["num_classes"] == 100
    r = invoke(["space", "sample", "--dataset", "mnist", "--space", "flash", "--n", "1", "--out", str(out)])
    assert r.exit_code == 2 and "space flash takes 3x32x32 inputs, dataset mnist has 1x28x28" in r.stderr
    r = invoke(["space", "sample", "--n", "1", "--out", str(out)])  # unchanged without --dataset
    assert r.exit_code == 0 and json.loads(out.read_text())["input_shape"] == [3, 32, 32]
    r = invoke(
        [
            "generate",
            "--dataset",
            "fashion-mnist",
            "--target-degree",
            "20",
            "--tolerance",
            "0.5",
            "--n",
            "2",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.stderr
    assert all(json.loads(line)["input_shape"] == [1, 28, 28] for line in out.read_text().splitlines())
    r = invoke(
        [
            "generate",
            "--dataset",
            "cifar10",
            "--space",
            "flash-fmnist",
            "--target-degree",
            "20",
            "--n",
            "1",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 2 and "space flash-fmnist takes 1x28x28" in r.stderr
