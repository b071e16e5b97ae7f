"""Disturbed measurements on the controller's side, with a fake device: stored apart from ok ones,
measured again later with a back-off, bounded, resumable, and counted by the report and
``nnflash results``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nnflash.calibration.workflow import usable_rows
from nnflash.controller.campaign import Campaign, MeasureSettings
from nnflash.controller.cli import cli
from nnflash.controller.inventory import Device
from nnflash.controller.profiling import stored_rows
from nnflash.controller.report import collect, disturbance_note
from nnflash.controller.store import ResultsDB
from nnflash.models.space import get_space

SPECS = get_space("flash").sample(3, seed=5)
DEV = Device(name="fake", host="fake.invalid")
SETTINGS = MeasureSettings(threads=1, repeat=4, affinity=(0,), wait_share_max=0.05, disturbed_share_max=0.25)


@dataclasses.dataclass(frozen=True)
class _Art:
    spec_id: str
    path: Path
    sha256: str
    format: str = "onnx"
    size: int = 1
    exporter: str = "fake"
    versions: tuple[tuple[str, str], ...] = ()


def _export(spec: Any, fmt: str, out_dir: Any, **kw: Any) -> _Art:
    path = Path(out_dir) / f"{spec.spec_id}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return _Art(spec.spec_id, path, f"{spec.spec_id:0<64}"[:64], fmt)


class _Device:
    """Answers ``measure``: ``disturbed`` for the first ``bad[spec]`` attempts of a spec, then ok.
    The ok record's samples hold one slow repeat, flagged as disturbed."""

    facts: dict[str, Any] = {"machine": "fake"}

    def __init__(self, bad: dict[str, int]) -> None:
        self.bad = dict(bad)
        self.log: list[tuple[str, float, dict[str, Any]]] = []
        self.sha_to_spec = {f"{s.spec_id:0<64}"[:64]: s.spec_id for s in SPECS}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def put_artifact(self, path: Any, sha256: str, fmt: str, verify_existing: bool = False) -> None:
        pass

    def results(self, ids: list[str]) -> dict[str, Any]:
        return {}

    def request(self, verb: str, args: dict, *, timeout_s: float, request_id: str) -> dict[str, Any]:
        sid = self.sha_to_spec[args["artifact"]["sha256"]]
        self.log.append((sid, time.monotonic(), args))
        flags = [False, False, True, False]
        samples = [1.0, 1.2, 9.0, 1.1]
        if self.bad.get(sid, 0) > 0:
            self.bad[sid] -= 1
            flags, samples = [True, True, True, False], [3.0, 3.1, 2.9, 1.0]
        record = {
            "latency_ms": 1.1 if not all(flags[:3]) else 1.0,
            "latency_ms_median": sorted(samples)[2],
            "latency_ms_mean": sum(samples) / 4,
            "latency_ms_p90": max(samples),
            "samples_ms": samples,
            "disturbance": {"repeat_disturbed": flags, "disturbed_share": sum(flags) / 4},
        }
        if sum(flags) / 4 > 0.25:
            return {"id": request_id, "status": "disturbed", "error": "disturbed measurement: 3 of 4", "result": record}
        return {"id": request_id, "status": "ok", "error": None, "result": record}


def _campaign(tmp_path: Path, store: ResultsDB, device: _Device, **kw: Any) -> Campaign:
    return Campaign(
        SPECS,
        [DEV],
        SETTINGS,
        store,
        tmp_path / "art",
        connect=lambda dev: device,
        export_fn=_export,
        **kw,
    )


def test_the_gate_settings_reach_the_agent() -> None:
    args = SETTINGS.agent_args("a" * 64)
    assert args["affinity"] == [0] and args["wait_share_max"] == 0.05 and args["disturbed_share_max"] == 0.25


def test_a_disturbed_model_is_measured_again_later_and_only_ok_is_a_latency(tmp_path: Path) -> None:
    a, b, c = (s.spec_id for s in SPECS)
    device = _Device({a: 2})
    with ResultsDB(tmp_path / "n.db") as store:
        result = _campaign(tmp_path, store, device, max_disturbed=3, disturbed_backoff_s=0.2).run()
    order = [sid for sid, _, _ in device.log]
    assert order == [a, b, c, a, a]  # later: behind the rest of the queue
    t = [when for sid, when, _ in device.log if sid == a]
    assert t[1] - t[0] >= 0.2 and t[2] - t[1] >= 0.4  # the back-off doubles
    rep = result.devices["fake"]
    assert (rep.ok, rep.disturbed, rep.failed, rep.still_disturbed) == (3, 2, 0, 0)
    assert [r.get("retry_in_s") for r in result.rows if r["spec_id"] == a] == [0.2, 0.4, None]
    with ResultsDB(tmp_path / "n.db") as store:
        assert store.failure_counts("fake", "onnxruntime", 1) == {}  # disturbed is not a failure
        assert store.disturbed_counts("fake", "onnxruntime", 1) == {a: 2}
        assert store.status_counts() == {"ok": 3, "disturbed": 2}
        assert "2 of 5 stored measurement(s) were disturbed" in disturbance_note(store)
        assert "0 visit(s) of a model have no undisturbed" in disturbance_note(store)
        report_rows = {r["spec_id"]: r for r in collect(store)}
    ok_rows = stored_rows(tmp_path / "n.db", ["fake"], "onnxruntime", 1)
    assert sorted(r["spec_id"] for r in ok_rows) == sorted([a, b, c])
    specs, lat, _, _ = usable_rows({s.spec_id: s for s in SPECS}, ok_rows)
    assert list(lat) == [1.1, 1.1, 1.1]  # the visits' latency_ms, never a disturbed one
    assert report_rows[a]["latency_ms"] == 1.1 and report_rows[a]["visits"] == 1


def test_attempts_are_bounded_per_run_and_a_rerun_tries_again(tmp_path: Path) -> None:
    a = SPECS[0].spec_id
    device = _Device({a: 99})
    with ResultsDB(tmp_path / "n.db") as store:
        result = _campaign(tmp_path, store, device, max_disturbed=2, disturbed_backoff_s=0.0).run()
        rep = result.devices["fake"]
        assert (rep.ok, rep.disturbed, rep.still_disturbed) == (2, 2, 1)
        assert [sid for sid, _, _ in device.log].count(a) == 2
        assert "1 visit(s) of a model have no undisturbed" in disturbance_note(store)
        assert a not in {r["spec_id"] for r in collect(store)}
        # a disturbance passes: the rerun (a quieter moment) gets max_disturbed fresh attempts
        again = _campaign(tmp_path, store, device, max_disturbed=2, disturbed_backoff_s=0.0)
        assert again.plan() == {"fake": [a]} and again.result.devices["fake"].retried_disturbed == 1
        rep2 = again.run().devices["fake"]
        assert (rep2.disturbed, rep2.still_disturbed) == (2, 1)
        assert [sid for sid, _, _ in device.log].count(a) == 4
        assert store.disturbed_counts("fake", "onnxruntime", 1) == {a: 4}  # every attempt kept


def test_results_shows_how_many_were_disturbed(tmp_path: Path) -> None:
    a = SPECS[0].spec_id
    with ResultsDB(tmp_path / "n.db") as store:
        _campaign(tmp_path, store, _Device({a: 1}), disturbed_backoff_s=0.0).run()
    db = str(tmp_path / "n.db")
    res = CliRunner().invoke(cli, ["results", "--db", db])
    assert res.exit_code == 0 and "4 measurement(s): 3 ok, 1 disturbed" in res.output
    res = CliRunner().invoke(cli, ["results", "--db", db, "--json"])
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["status"] for r in rows].count("disturbed") == 1
    assert "3 ok, 1 disturbed" in res.stderr


def test_profile_gate_options_are_checked(tmp_path: Path) -> None:
    from nnflash.controller.commands.common import parse_affinity

    assert parse_affinity("2,3") == (2, 3) and parse_affinity(None) is None
    specs = tmp_path / "s.jsonl"
    specs.write_text(SPECS[0].canonical_json() + "\n")
    for bad, words in (
        (["--affinity", "one"], "--affinity: expected comma-separated CPU ids"),
        (["--affinity", "-1"], "--affinity: CPU ids must be non-negative"),
        (["--disturbed-share", "1.5"], "--disturbed-share: must be between 0 and 1"),
        (["--max-disturbed", "0"], "--max-disturbed: must be a positive integer"),
    ):
        res = CliRunner().invoke(cli, ["profile", str(specs), "--db", str(tmp_path / "n.db"), *bad])
        assert res.exit_code == 2 and words in res.output, res.output
        assert not (tmp_path / "n.db").exists()


def test_calibration_stopped_by_disturbance_says_why() -> None:
    from nnflash.calibration.errors import CostModelError
    from nnflash.calibration.workflow import calibrate
    from nnflash.models.space import get_space

    cands = get_space("flash").sample(40, seed=3)

    def profile(specs: list[Any]) -> list[dict[str, Any]]:  # a device too busy for any ok visit
        return [{"spec_id": s.spec_id, "status": "disturbed", "latency_ms": 1.0} for s in specs]

    with pytest.raises(CostModelError) as ei:
        calibrate(cands, 20, profile, model="linear")
    msg = str(ei.value)
    assert "too few successful measurements to continue: 0" in msg and "disturbed" in msg
    assert "--disturbed-share" in msg and "\n" not in msg
