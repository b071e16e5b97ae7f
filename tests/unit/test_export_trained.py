"""Export with trained weights: a tiny network trained by ``run_trainings`` (the engine behind
`nnflash train`) is exported with the state dict the database points to; the ONNX file computes what
the trained network computes (not what its initialization computes), the cache tells the two apart,
and `nnflash export --trained` finds the weights from a design line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnflash.controller.cli import cli
from nnflash.controller.training import run_trainings
from nnflash.controller.weights import trained_weights
from nnflash.models.builder import build_module
from nnflash.models.datasets import Dataset
from nnflash.models.errors import ExportError
from nnflash.models.export import export_spec
from nnflash.models.spec import Cell, DenseSpec
from nnflash.models.training_protocol import TrainingProtocol

SPEC = DenseSpec((Cell(2, 4, 0), Cell(2, 8, 2)), input_shape=(1, 8, 8), num_classes=4)
OTHER = DenseSpec((Cell(3, 6, 1), Cell(2, 8, 0)), input_shape=(1, 8, 8), num_classes=4)
PROTO = TrainingProtocol(name="tiny", train_size=320, epochs=1, batch_size=32, lr=0.05, schedule="linear")


def _quadrants(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 90, (n, 1, 8, 8))
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 120
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results database with one ok training of SPEC (weights on disk)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        tx, ty = _quadrants(400, rng)
        vx, vy = _quadrants(100, rng)
        data = Dataset.from_arrays("quadrants", tx, ty, vx, vy, num_classes=4, val_size=80)
        db = tmp_path_factory.mktemp("trained") / "r.db"
        res = run_trainings([SPEC], data, PROTO, 0, db, torch_device="cpu")
        assert res.ok == 1
    finally:
        torch.set_num_threads(before)
    return db


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def test_the_export_computes_the_trained_network(trained: Path, tmp_path: Path) -> None:
    tw = trained_weights(trained, [SPEC.spec_id, OTHER.spec_id])
    assert list(tw) == [SPEC.spec_id]  # OTHER was never trained
    assert tw[SPEC.spec_id].dataset == "quadrants" and tw[SPEC.spec_id].val_accuracy is not None
    art = export_spec(SPEC, "onnx", tmp_path / "out", weights=tw[SPEC.spec_id].path)
    assert art.weights_sha256 is not None and art.max_rel_err <= 1e-4
    x = np.random.default_rng(1).normal(size=(1, 1, 8, 8)).astype(np.float32)
    got = _onnx_logits(art.path, x)
    net = build_module(SPEC).eval()
    with torch.no_grad():
        untrained = net(torch.from_numpy(x)).numpy()
        net.load_state_dict(torch.load(tw[SPEC.spec_id].path, weights_only=True))
        want = net(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, untrained, rtol=1e-2, atol=1e-3)
    # cached as the trained export; an untrained export of the same spec is another cache key
    assert export_spec(SPEC, "onnx", tmp_path / "out", weights=tw[SPEC.spec_id].path).cached
    plain = export_spec(SPEC, "onnx", tmp_path / "out")
    assert not plain.cached and plain.weights_sha256 is None
    assert np.allclose(_onnx_logits(plain.path, x), untrained, rtol=1e-4, atol=1e-5)


def test_weights_of_another_spec_are_refused(trained: Path, tmp_path: Path) -> None:
    w = trained_weights(trained, [SPEC.spec_id])[SPEC.spec_id].path
    with pytest.raises(ExportError, match=f"do not fit spec {OTHER.spec_id}"):
        export_spec(OTHER, "onnx", tmp_path, weights=w)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ExportError, match="cannot read"):
        export_spec(SPEC, "onnx", tmp_path, weights=bad)
    assert not list(tmp_path.glob("*.onnx"))


def test_export_trained_cli_takes_a_design_line(trained: Path, tmp_path: Path) -> None:
    designs = tmp_path / "designs.jsonl"
    lines = [{"spec": json.loads(s.canonical_json()), "spec_id": s.spec_id, "objective": {}} for s in (SPEC, OTHER)]
    designs.write_text("".join(json.dumps(d) + "\n" for d in lines))
    out = tmp_path / "out"
    args = ["export", str(designs), "--out", str(out), "--trained", "--db", str(trained), "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    by_id = {r["spec_id"]: r for r in rows}
    assert by_id[SPEC.spec_id]["weights"]["dataset"] == "quadrants"
    assert by_id[OTHER.spec_id]["weights"] is None
    assert f"{OTHER.spec_id} has no trained weights" in res.stderr
    side = json.loads((out / f"{SPEC.spec_id}.onnx.json").read_text())
    assert side["weights_sha256"] is not None


def test_export_trained_needs_a_database(tmp_path: Path) -> None:
    specs = tmp_path / "s.jsonl"
    specs.write_text(SPEC.to_json_line() + "\n")
    res = CliRunner().invoke(cli, ["export", str(specs), "--out", str(tmp_path), "--trained", "--db", "none.db"])
    assert res.exit_code == 2 and "--db: none.db does not exist" in res.output
