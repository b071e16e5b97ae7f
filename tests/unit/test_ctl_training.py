"""Training runs below the CLI: what is done is skipped, an interruption resumes without storing
anything twice, a divergence is a stored result and the batch goes on, bad input is a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nnflash.controller.errors import ConfigError
from nnflash.controller.store import ResultsDB
from nnflash.controller.training import (
    LocalExecutor,
    TrainingObserver,
    TrainingPlan,
    make_executor,
    run_trainings,
    weights_dir_for,
)
from nnflash.models.datasets import Dataset
from nnflash.models.spec import Cell, DenseSpec
from nnflash.models.training import EpochInfo, TrainingError
from nnflash.models.training_protocol import TrainingProtocol


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest, and keeps the test quick on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadrants(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 90, (n, 1, 8, 8))
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 120
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    train_x, train_y = quadrants(400, rng)
    test_x, test_y = quadrants(100, rng)
    return Dataset.from_arrays("quadrants", train_x, train_y, test_x, test_y, num_classes=4, val_size=80)


SPECS = [
    DenseSpec((Cell(2, 4, 0), Cell(2, 8, 2)), input_shape=(1, 8, 8), num_classes=4),
    DenseSpec((Cell(3, 4, 1), Cell(2, 8, 0)), input_shape=(1, 8, 8), num_classes=4),
    DenseSpec((Cell(2, 6, 1), Cell(3, 8, 3)), input_shape=(1, 8, 8), num_classes=4),
]
PROTO = TrainingProtocol(name="tiny", train_size=320, epochs=2, batch_size=32, lr=0.05, schedule="linear")


class Recorder(TrainingObserver):
    def __init__(self, interrupt_after: int = 0, interrupt_at_epoch: bool = False) -> None:
        self.plans: list[TrainingPlan] = []
        self.rows: list[dict[str, Any]] = []
        self.skips: list[dict[str, Any]] = []
        self.epochs: list[tuple[str, int]] = []
        self.interrupt_after = interrupt_after
        self.interrupt_at_epoch = interrupt_at_epoch
        self.closed_calls = 0

    def planned(self, plan: TrainingPlan) -> None:
        self.plans.append(plan)

    def skipped(self, row: dict[str, Any]) -> None:
        self.skips.append(row)

    def epoch(self, spec_id: str, info: EpochInfo) -> None:
        self.epochs.append((spec_id, info.epoch))
        # Ctrl-C during the second spec's first epoch, after its checkpoint is written
        if self.interrupt_at_epoch and len(self.rows) == 1:
            raise KeyboardInterrupt

    def trained(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.interrupt_after and len(self.rows) == self.interrupt_after:
            raise KeyboardInterrupt

    def closed(self) -> None:
        self.closed_calls += 1


def test_trains_stores_and_skips_what_is_done(data: Dataset, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    rec = Recorder()
    res = run_trainings(SPECS[:2], data, PROTO, 0, db, torch_device="cpu", observer=rec)
    assert (res.planned, res.ok, res.failed, res.diverged, res.interrupted) == (2, 2, 0, 0, False)
    assert rec.plans[0].todo == [s.spec_id for s in SPECS[:2]] and rec.plans[0].estimate_s > 0
    assert rec.closed_calls == 1 and len(rec.epochs) == 4
    with ResultsDB(db) as store:
        rows = store.trainings(dataset="quadrants", protocol_hash=PROTO.protocol_hash, seed=0)
        assert [r["status"] for r in rows] == ["ok", "ok"]
        for r in rows:
            assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
            rec_ = r["record"]
            assert len(rec_["train_loss"]) == 2 and rec_["wall_s"] > 0 and rec_["images_per_s"] > 0
            assert rec_["torch_device"] == "cpu" and "torch" in rec_["versions"]
            assert Path(r["weights_path"]).is_file()
            assert Path(r["weights_path"]).parent == weights_dir_for(db)
        assert store.get_training_protocol(PROTO.protocol_hash)["name"] == "tiny"
    assert not list((weights_dir_for(db) / "checkpoints").iterdir())  # done with
    # rerun with one more spec: only the new one trains
    rec2 = Recorder()
    res2 = run_trainings(SPECS, data, PROTO, 0, db, torch_device="cpu", observer=rec2)
    assert (res2.planned, res2.ok, res2.skipped) == (1, 1, 2)
    assert [r["skipped"] for r in rec2.skips] == ["done", "done"]
    assert rec2.skips[0]["val_accuracy"] == rows[0]["val_accuracy"]
    # another seed is another key
    res3 = run_trainings(SPECS[:1], data, PROTO, 1, db, torch_device="cpu")
    assert res3.ok == 1


def test_interrupt_after_a_spec_resumes_and_stores_nothing_twice(data: Dataset, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    res = run_trainings(SPECS, data, PROTO, 0, db, torch_device="cpu", observer=Recorder(interrupt_after=1))
    assert res.interrupted and res.ok == 1
    with ResultsDB(db) as store:
        assert len(store.trainings()) == 1
    res2 = run_trainings(SPECS, data, PROTO, 0, db, torch_device="cpu")
    assert not res2.interrupted and (res2.skipped, res2.ok) == (1, 2)
    with ResultsDB(db) as store:
        rows = store.trainings()
        assert len(rows) == 3 and {r["spec_id"] for r in rows} == {s.spec_id for s in SPECS}


def test_interrupt_mid_spec_resumes_from_its_checkpoint(data: Dataset, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    res = run_trainings(SPECS[:2], data, PROTO, 0, db, torch_device="cpu", observer=Recorder(interrupt_at_epoch=True))
    assert res.interrupted and res.ok == 1
    ckpts = list((weights_dir_for(db) / "checkpoints").iterdir())
    assert len(ckpts) == 1 and SPECS[1].spec_id in ckpts[0].name
    rec = Recorder()
    res2 = run_trainings(SPECS[:2], data, PROTO, 0, db, torch_device="cpu", observer=rec)
    assert res2.ok == 1 and rec.rows[0]["resumed_from_epoch"] == 1
    with ResultsDB(db) as store:
        assert len(store.trainings()) == 2


def test_a_diverged_run_is_stored_with_its_reason_and_the_batch_goes_on(data: Dataset, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    wild = TrainingProtocol(name="wild", train_size=320, epochs=2, batch_size=32, lr=1e30, momentum=0.0, nesterov=False)
    rec = Recorder()
    res = run_trainings(SPECS[:2], data, wild, 0, db, torch_device="cpu", observer=rec, max_attempts=1)
    assert res.diverged == 2 and not res.interrupted
    assert all(r["status"] == "diverged" and "loss became" in r["error"] for r in rec.rows)
    with ResultsDB(db) as store:
        rows = store.trainings()
        assert [r["status"] for r in rows] == ["diverged", "diverged"]
        assert all(r["val_accuracy"] is None and r["error"] for r in rows)
    # bounded retries: with max_attempts=1 a rerun gives up on them
    rec2 = Recorder()
    res2 = run_trainings(SPECS[:2], data, wild, 0, db, torch_device="cpu", observer=rec2, max_attempts=1)
    assert (res2.planned, res2.gave_up) == (0, 2) and [r["skipped"] for r in rec2.skips] == ["gave_up"] * 2


def test_a_failing_spec_is_a_stored_failure(data: Dataset, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    # a checkpoint file that is not one: the engine refuses it, the spec fails, the next trains
    wdir = weights_dir_for(db) / "checkpoints"
    wdir.mkdir(parents=True)
    (wdir / f"{SPECS[0].spec_id}-quadrants-{PROTO.protocol_hash}-s0.ckpt").write_bytes(b"junk")
    res = run_trainings(SPECS[:2], data, PROTO, 0, db, torch_device="cpu")
    assert (res.failed, res.ok) == (1, 1)
    failed = [r for r in res.rows if r["status"] == "failed"][0]
    assert failed["spec_id"] == SPECS[0].spec_id and "checkpoint" in failed["error"]


def test_bad_input_is_an_error_before_training(data: Dataset, tmp_path: Path) -> None:
    wrong = DenseSpec((Cell(2, 4, 0),), input_shape=(3, 32, 32), num_classes=4)
    with pytest.raises(TrainingError, match="does not fit dataset quadrants"):
        run_trainings([SPECS[0], wrong], data, PROTO, 0, tmp_path / "r.db", torch_device="cpu")
    assert not (tmp_path / "r.db").exists()
    with pytest.raises(ConfigError, match="seed"):
        run_trainings(SPECS, data, PROTO, -1, tmp_path / "r.db")
    with pytest.raises(ConfigError, match="workers"):
        LocalExecutor(0)
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("slurm")


def test_worker_processes(data: Dataset, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    rec = Recorder()
    res = run_trainings(SPECS[:2], data, PROTO, 0, db, torch_device="cpu", executor=LocalExecutor(2), observer=rec)
    assert res.ok == 2 and len(rec.epochs) == 4
    # the same numbers as in this process (same seed, same data; one thread each there)
    serial = run_trainings(SPECS[:2], data, PROTO, 0, tmp_path / "s.db", torch_device="cpu")
    by_id = {r["spec_id"]: r["train_loss"] for r in serial.rows}
    for r in res.rows:
        assert np.allclose(r["train_loss"], by_id[r["spec_id"]], rtol=1e-3)
