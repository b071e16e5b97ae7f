"""`nnflash run` end to end on the built-in `local` device with a small budget: the real agent,
campaigns, calibration, the search, verification and refits, in one database.

- the command interrupted (SIGINT) during calibration exits 130 and its rerun resumes: what was
  measured is not measured again, and the rerun writes a report that leads with the answer,
  designs.jsonl with measurements, and --json;
- the loop started from a deliberately wrong cost model (fitted on the real calibration's models
  with their measured latencies scaled by 0.4: it predicts 2.5x too fast) recommends designs that
  break their limits when measured; they join the training data, the refit model's margin and the
  recommendation change in the next round.

The agent's disturbed gate is off (``--busy-ok``): these tests check the loop, not whether the test
machine was quiet.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from nnflash.calibration.base import make_model, model_from_dict  # noqa: E402
from nnflash.controller.commands.common import devices_from, load_inventory  # noqa: E402
from nnflash.controller.profiling import stored_rows  # noqa: E402
from nnflash.controller.runloop import LoopPlan, RunRequest, run_loop, specs_by_id  # noqa: E402
from nnflash.controller.store import ResultsDB  # noqa: E402
from nnflash.models.space import get_space  # noqa: E402
from nnflash_agent.stats import model_latency_ms, visit_latency_of  # noqa: E402

pytestmark = pytest.mark.integration

SMALL = ["--budget", "7", "--passes", "1", "--repeat", "3", "--busy-ok", "--threads", "1"]


def _cmd(db: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nnflash.controller.cli", "run", *SMALL, "--db", str(db), "--out", str(out), *extra]


def _ok_rows(db: Path) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [tuple(r) for r in con.execute("SELECT spec_id, id FROM measurements WHERE status = 'ok' ORDER BY id")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One interrupted and resumed `nnflash run` (a limit, one round): its database and outputs."""
    tmp = tmp_path_factory.mktemp("run")
    db, out = tmp / "n.db", tmp / "out"
    proc = subprocess.Popen(
        _cmd(db, out, "--max-latency-ms", "30", "--rounds", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _ok_rows(db) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first = _ok_rows(db)
    if not first:
        proc.kill()
        pytest.fail(f"no measurement stored before the deadline: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    before = _ok_rows(db)
    res = subprocess.run(
        _cmd(db, out, "--max-latency-ms", "30", "--rounds", "1", "--json"), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    return {"db": db, "out": out, "before": before, "after": _ok_rows(db), "json": json.loads(res.stdout), "err": err}


def test_interrupted_run_resumes_and_reports(calibrated: dict) -> None:
    # the interrupted run said how to resume; nothing it measured was measured again
    assert "run the same command again to resume" in calibrated["err"] or "interrupted" in calibrated["err"]
    before, after = calibrated["before"], calibrated["after"]
    assert after[: len(before)] == before
    ids = [sid for sid, _ in after]
    assert len(ids) == len(set(ids)), "a model measured twice (one pass)"
    summary = calibrated["json"]
    assert summary["calibration"][0]["source"] == "calibrated"
    [design] = summary["designs"]
    assert design["limit_latency_ms"] == 30.0
    assert design["measured"]["status"] == "ok" and design["measured"]["latency_ms"] > 0
    assert design["objective"]["name"] == "nn-degree" and design["nn_degree"] == pytest.approx(
        design["objective"]["value"]
    )
    assert design["spec_id"] in ids  # measured into the one database
    lines = (calibrated["out"] / "designs.jsonl").read_text().splitlines()
    assert [json.loads(x)["spec_id"] for x in lines] == [design["spec_id"]]
    assert Path(design["files"][0]).exists() and design["files"][0].endswith(".onnx")
    html = (calibrated["out"] / "report.html").read_text()
    assert html.index("The answer") < html.index("Pareto front") < html.index("Calibration")
    assert design["spec_id"] in html and "NN-Degree is not an accuracy" in html


def test_wrong_cost_model_is_corrected_by_the_loop(calibrated: dict, tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    shutil.copy(calibrated["db"], db)
    with ResultsDB(db, readonly=True) as store:
        row = store.latest_cost_model("local", "onnxruntime", 1)
    assert row is not None
    good = model_from_dict(json.loads(row["json"]))
    ids = list(good.metadata_["training_spec_ids"])
    per: dict[str, list[float]] = {}
    for r in stored_rows(db, ["local"], "onnxruntime", 1, set(ids)):
        per.setdefault(r["spec_id"], []).append(visit_latency_of(r))
    by_id = specs_by_id(str(db), ids)
    specs = [by_id[i] for i in ids if i in per]
    measured = np.array([model_latency_ms(per[s.spec_id]) for s in specs])
    wrong = make_model("roofline").fit(specs, measured * 0.4)  # deliberately 2.5x too fast
    wrong.metadata_.update(space="flash", input_shape=[3, 32, 32], num_classes=10)
    limits = (float(np.median(measured)), float(np.median(measured)) * 2)
    req = RunRequest(
        device=devices_from(load_inventory(None), "local")[0],
        space=get_space("flash"),
        db_path=str(db),
        out_dir=str(tmp_path / "out"),
        artifacts_dir=str(tmp_path / "art"),
        threads=(1,),
        latency_limits_ms=limits,
        plan=LoopPlan("test", budget=7, pool=300, passes=1, repeat=3, min_repeat_ms=5.0, front_points=5),
        measure={"disturbed_share_max": None},
        initial_models={1: wrong},
        trust_initial=True,
        rounds=2,
    )
    result = run_loop(req)
    first, second = result.rounds[0], result.rounds[1]
    # round 1 trusted the wrong model without margin: its designs broke their limits on the device
    assert first.margin == 0.0
    assert any("breaks its" in why or "off the measured" in why for why in first.added.values())
    assert first.added, "the wrong model's misses must join the training data"
    # the refit model (real measurements, the misses added) is another model with its own margin
    assert second.model_ids[1] != first.model_ids[1]
    assert second.margin > 0.0
    assert {v.design.spec_id for v in second.designs} != {v.design.spec_id for v in first.designs}
    refit = result.states[0].model
    assert set(first.added) <= set(refit.metadata_["training_spec_ids"])
    # the refit model is far less wrong on round 1's designs than the one it replaced
    d1 = [v for v in first.designs if v.measured_ms]
    old = np.median([abs(v.design.latency_ms / v.measured_ms - 1) for v in d1])
    new = np.median([abs(float(refit.predict([v.design.spec])[0]) / v.measured_ms - 1) for v in d1])
    assert new < old
    with ResultsDB(db, readonly=True) as store:
        assert store.latest_cost_model("local", "onnxruntime", 1)["id"] == result.states[0].model_id
