"""`nnflash accuracy fit|predict|select` on a temporary database of real (tiny) trainings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accuracy_fixture import DATASET, PROTOCOL, load_fixture, tiny_dataset, tiny_info
from click.testing import CliRunner

import nnflash.controller.accuracy as acc_mod
from nnflash.controller.cli import cli
from nnflash.controller.store import ResultsDB
from nnflash.models import datasets
from nnflash.models.spec import Cell, DenseSpec, load_specs_jsonl, parse_spec
from nnflash.models.training import train_spec

PROTOCOL_TOML = "\n".join(f"{k} = {json.dumps(v)}" for k, v in PROTOCOL.to_dict().items() if v is not None)


@pytest.fixture
def tiny(monkeypatch, tmp_path: Path) -> Path:
    """The tiny task registered as a dataset; its protocol as a TOML file; returns that file."""
    monkeypatch.setitem(datasets.DATASETS, DATASET, tiny_info())
    monkeypatch.setattr(acc_mod, "load_dataset", lambda name, data_dir=None: tiny_dataset())
    p = tmp_path / "tiny.toml"
    p.write_text(PROTOCOL_TOML + "\n")
    return p


def _db(path: Path, n: int | None = None) -> Path:
    """A results database holding the fixture's measured trainings (the first ``n`` specs)."""
    rows = load_fixture()["trainings"]
    keep = {parse_spec(r["spec"]).spec_id for r in rows[:n]} if n is not None else None
    with ResultsDB(path) as db:
        db.add_training_protocol(PROTOCOL.protocol_hash, PROTOCOL.name, PROTOCOL.to_dict())
        for r in rows:
            spec = parse_spec(r["spec"])
            if keep is not None and spec.spec_id not in keep:
                continue
            db.add_spec(spec.spec_id, spec.family, spec.to_json_line())
            db.add_training(
                spec_id=spec.spec_id,
                dataset=DATASET,
                protocol_hash=PROTOCOL.protocol_hash,
                seed=r["seed"],
                status=r["status"],
                val_accuracy=r["val_accuracy"],
                test_accuracy=r["test_accuracy"],
            )
    return path


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def test_fit_on_real_trainings_then_predict(tiny: Path, tmp_path: Path) -> None:
    db = _db(tmp_path / "r.db")
    # one more training, run here through the engine and stored like `nnflash train` stores it
    extra = DenseSpec((Cell(2, 4, 0), Cell(3, 6, 3)), input_shape=(1, 8, 8), num_classes=4)
    r = train_spec(extra, tiny_dataset(), PROTOCOL, seed=0)
    with ResultsDB(db) as store:
        store.add_spec(extra.spec_id, extra.family, extra.to_json_line())
        store.add_training(
            spec_id=extra.spec_id, dataset=DATASET, protocol_hash=PROTOCOL.protocol_hash, seed=0,
            status=r.status, val_accuracy=r.val_accuracy, test_accuracy=r.test_accuracy,
        )  # fmt: skip
    out = tmp_path / "acc.json"
    code, text = _run("accuracy", "fit", "--db", str(db), "--dataset", DATASET, "--protocol", str(tiny),
                      "--kind", "multi", "--out", str(out))  # fmt: skip
    assert code == 0, text
    assert "multi accuracy predictor from 25 trained specs (31 trainings, seeds 0, 1, 2)" in text
    assert "cross-validated (25 folds): Spearman" in text and "Kendall" in text and "points" in text
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads(out.read_text())["metadata"]
    assert meta["dataset"] == DATASET and meta["protocol_hash"] == PROTOCOL.protocol_hash
    assert meta["input_shape"] == [1, 8, 8] and len(meta["training_spec_ids"]) == 25
    assert set(meta["cv"]) >= {"spearman", "kendall", "mae_points"} and meta["proxy_batch"]["key"]
    with ResultsDB(db) as store:  # the proxies are cached for the batch
        assert len(store.proxies(DATASET, meta["proxy_batch"]["key"])) == 25

    specs = tmp_path / "s.jsonl"
    specs.write_text("".join(parse_spec(r["spec"]).to_json_line() + "\n" for r in load_fixture()["trainings"][:3]))
    code, text = _run("accuracy", "predict", "--accuracy", str(out), str(specs), "--json")
    assert code == 0, text
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["spec_id"] for r in rows] == [s.spec_id for s in load_specs_jsonl(specs)]
    assert all(0 <= r["accuracy"] <= 1 and r["accuracy_std"] > 0 for r in rows)
    code, text = _run("accuracy", "predict", "--accuracy", str(out), str(specs))
    assert code == 0 and "accuracy %" in text


def test_flash_fit_one_seed_and_seeds_pool(tiny: Path, tmp_path: Path) -> None:
    db = _db(tmp_path / "r.db")
    out = tmp_path / "f.json"
    code, text = _run("accuracy", "fit", "--db", str(db), "--dataset", DATASET, "--protocol", str(tiny),
                      "--kind", "flash", "--seed", "1", "--out", str(out))  # fmt: skip
    assert code == 2 and "too few trained specs to fit flash: 3 trained on tiny-quadrants" in text
    assert "need at least 5" in text and text.count("\n") == 1
    code, text = _run("accuracy", "fit", "--db", str(db), "--dataset", DATASET, "--protocol", str(tiny),
                      "--kind", "flash", "--out", str(out), "--json")  # fmt: skip
    assert code == 0, text
    res = json.loads(text)
    assert res["n_specs"] == 24 and res["n_trainings"] == 30 and res["cv"]["n"] == 24


def test_bad_input_is_one_line_exit_2(tiny: Path, tmp_path: Path) -> None:
    db = _db(tmp_path / "r.db", n=3)
    out = tmp_path / "a.json"
    code, text = _run("accuracy", "fit", "--db", str(db), "--dataset", DATASET, "--protocol", str(tiny),
                      "--kind", "multi", "--out", str(out))  # fmt: skip
    assert code == 2 and "too few trained specs to fit multi: 3 trained" in text and "need at least 10" in text
    code, text = _run("accuracy", "fit", "--db", str(db), "--dataset", "imagenet", "--out", str(out))
    assert code == 2 and "unknown dataset 'imagenet'" in text
    code, text = _run("accuracy", "fit", "--db", str(tmp_path / "none.db"), "--dataset", DATASET, "--out", str(out))
    assert code == 2 and "does not exist" in text
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nnflash-accuracy-model", "format_version": 1, "kind": "flash"')
    specs = tmp_path / "s.jsonl"
    specs.write_text(DenseSpec((Cell(2, 4, 0),)).to_json_line() + "\n")  # 3x32x32
    code, text = _run("accuracy", "predict", "--accuracy", str(bad), str(specs))
    assert code == 2 and "not valid JSON" in text and text.count("\n") == 1
    # a predictor of the tiny 1x8x8 task used on 3x32x32 specs
    _db(tmp_path / "full.db")
    code, text = _run("accuracy", "fit", "--db", str(tmp_path / "full.db"), "--dataset", DATASET, "--protocol",
                      str(tiny), "--kind", "nnmass", "--out", str(out))  # fmt: skip
    assert code == 0, text
    code, text = _run("accuracy", "predict", "--accuracy", str(out), str(specs))
    assert code == 2 and "fitted on tiny-quadrants (1x8x8) specs" in text and "input shape 3x32x32" in text


def test_select_spreads_the_budget_over_the_default_space(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    code, text = _run("accuracy", "select", "--budget", "12", "--dataset", "fashion-mnist", "--pool", "300",
                      "--out", str(out))  # fmt: skip
    assert code == 0, text
    assert "space flash-fmnist" in text
    specs = load_specs_jsonl(out)
    assert len({s.spec_id for s in specs}) == 12 and all(s.input_shape == (1, 28, 28) for s in specs)
    code, again = _run("accuracy", "select", "--budget", "12", "--dataset", "fashion-mnist", "--pool", "300",
                       "--out", str(tmp_path / "b.jsonl"))  # fmt: skip
    assert (tmp_path / "b.jsonl").read_text() == out.read_text()
    code, text = _run("accuracy", "select", "--budget", "5", "--dataset", "fashion-mnist", "--space", "flash",
                      "--out", str(out))  # fmt: skip
    assert code == 2 and "space flash takes 3x32x32 inputs, dataset fashion-mnist has 1x28x28" in text
    code, text = _run("accuracy", "select", "--budget", "5", "--dataset", "svhn", "--out", str(out))
    assert code == 2 and "unknown dataset 'svhn'" in text
