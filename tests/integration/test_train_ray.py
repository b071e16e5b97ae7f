"""The Ray executor for real: a local Ray (two CPUs, a small object store, no dashboard), no
local_mode and no mocks; two tiny specs trained as Ray tasks and stored by this process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnflash.controller.store import ResultsDB
from nnflash.controller.training import RayExecutor, run_trainings
from nnflash.models.datasets import Dataset
from nnflash.models.spec import Cell, DenseSpec
from nnflash.models.training_protocol import TrainingProtocol

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration


def test_two_specs_as_ray_tasks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    x = rng.integers(0, 90, (300, 1, 8, 8))
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 120
    x = x.astype(np.uint8)
    data = Dataset.from_arrays("quadrants", x[:240], y[:240], x[240:], y[240:], num_classes=4, val_size=40)
    specs = [
        DenseSpec((Cell(2, 4, 0), Cell(2, 8, 2)), input_shape=(1, 8, 8), num_classes=4),
        DenseSpec((Cell(3, 4, 1), Cell(2, 8, 0)), input_shape=(1, 8, 8), num_classes=4),
    ]
    proto = TrainingProtocol(name="tiny", train_size=192, epochs=2, batch_size=32, lr=0.05, schedule="linear")
    ex = RayExecutor(
        init_kwargs={
            "num_cpus": 2,
            "object_store_memory": 120 * 1024 * 1024,
            "include_dashboard": False,
            "log_to_driver": False,
        }
    )
    db = tmp_path / "r.db"
    res = run_trainings(specs, data, proto, 0, db, torch_device="cpu", executor=ex)
    assert not ray.is_initialized()  # started here, shut down here
    assert (res.ok, res.failed, res.diverged) == (2, 0, 0), res.rows
    with ResultsDB(db) as store:
        rows = store.trainings(dataset="quadrants", status="ok")
        assert {r["spec_id"] for r in rows} == {s.spec_id for s in specs}
        for r in rows:
            assert 0 <= r["test_accuracy"] <= 1 and Path(r["weights_path"]).is_file()
            assert r["record"]["torch_device"] == "cpu"
