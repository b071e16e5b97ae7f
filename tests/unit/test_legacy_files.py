"""Files written by nnflash 0.1.0 before the move to the ``nnflash.*`` namespace still load.

``fixtures/legacy_0_1/`` was written by that version's own code (commit a19abad, top-level
``models``/``controller``/``calibration`` imports): ``nnflash devices add`` wrote the inventory,
``nnflash profile`` of three ``flash`` specs on the local device wrote the database, and every
registered cost model was fitted on synthetic data and saved, with its predictions for two probe
specs recorded beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnflash.calibration import load_model
from nnflash.controller.inventory import Inventory
from nnflash.controller.store import ResultsDB
from nnflash.models.space import get_space
from nnflash.models.spec import load_specs_jsonl

LEGACY = Path(__file__).parent / "fixtures" / "legacy_0_1"
PREDICTIONS = json.loads((LEGACY / "predictions.json").read_text())


def test_inventory_loads() -> None:
    inv = Inventory.load(LEGACY / "devices.toml")
    pi = inv.get("pi")
    assert (pi.host, pi.user, pi.runtime, pi.threads, pi.energy) == ("192.0.2.10", "pi", "tflite", 4, "ina219")


def test_database_opens_and_reads(tmp_path: Path) -> None:
    db = tmp_path / "nnflash.db"
    db.write_bytes((LEGACY / "nnflash.db").read_bytes())
    with ResultsDB(db) as store:
        rows = store.measurements(device="local")
        assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
        assert all(r["latency_ms_median"] and r["latency_ms_median"] > 0 for r in rows)
        ids = {s.spec_id for s in load_specs_jsonl(LEGACY / "specs.jsonl")}
        assert {r["spec_id"] for r in rows} == ids
        assert store.done_spec_ids("local", "onnxruntime", 1) == ids
        assert store.measurement_sources("local", "onnxruntime") == ["agent"]  # schema 5: rows kept as the agent's


@pytest.mark.parametrize("kind", sorted(PREDICTIONS["predictions"]))
def test_cost_model_loads_and_predicts_the_same(kind: str) -> None:
    model = load_model(LEGACY / f"cost-{kind}.json")
    probe = get_space(PREDICTIONS["space"]).sample(2, seed=PREDICTIONS["probe_seed"])
    kwargs = {"latency_ms": np.full(len(probe), 10.0)} if "latency_ms" in type(model).fit_requires else {}
    got = model.predict(probe, **kwargs)
    np.testing.assert_allclose(got, PREDICTIONS["predictions"][kind], rtol=1e-9)
    assert model.metadata_["device"] == "pi"
