"""nnflash_agent.measure: the counting rule, checked with a counting stand-in runner (no runtime needed)."""

from __future__ import annotations

import time

import pytest

import nnflash_agent.runners
from nnflash_agent.measure import MeasurementFailed, _grow_number, parse_options, run_measurement
from nnflash_agent.protocol import RUNTIME_ERROR, RUNTIME_UNAVAILABLE
from nnflash_agent.telemetry import Telemetry


class CountingRunner(nnflash_agent.runners.Runner):
    runtime = "fake"

    def __init__(self, call_s=0.0, fail_load=None, fail_run_after=None):
        super().__init__()
        self.call_s = call_s
        self.calls = 0
        self.fail_load = fail_load
        self.fail_run_after = fail_run_after
        self.version = "0.0"

    def load(self, path, threads):
        if self.fail_load:
            raise self.fail_load
        self.threads = threads

    def input_specs(self):
        return [{"name": "x", "shape": [1, 4], "dtype": "float32"}]

    def prepare(self, seed):
        pass

    def run(self):
        self.calls += 1
        if self.fail_run_after is not None and self.calls > self.fail_run_after:
            raise RuntimeError("inference exploded")
        if self.call_s:
            end = time.perf_counter() + self.call_s
            while time.perf_counter() < end:
                pass


@pytest.fixture
def runner(monkeypatch):
    holder = {}

    def install(**kw):
        r = CountingRunner(**kw)
        holder["r"] = r
        monkeypatch.setattr(nnflash_agent.runners, "make_runner", lambda name: r)
        return r

    return install


def measure(**raw):
    opts = parse_options(raw)
    return run_measurement("/dev/null", "fake", opts, Telemetry(vcgencmd=None))


def test_fixed_runs_counting(runner):
    r = runner()
    rec = measure(fixed_runs=9, warmup_runs=4, warmup_s=0.0)
    assert rec["number"] == 1 and rec["repeat"] == 9 and len(rec["samples_ms"]) == 9
    assert rec["warmup_runs"] == 4  # the first inference counts as warm-up call 1
    assert r.calls == 4 + 9
    assert rec["inferences"] == 9 and rec["calibration"] == []


def test_number_repeat_without_calibration(runner):
    r = runner()
    rec = measure(number=5, repeat=3, min_repeat_ms=0.0, warmup_runs=1, warmup_s=0.0)
    assert r.calls == 1 + 5 * 3
    assert rec["number"] == 5 and rec["repeat"] == 3 and rec["calibration"] == []


def test_number_grows_to_min_repeat_ms(runner):
    r = runner(call_s=0.0005)
    rec = measure(repeat=4, min_repeat_ms=10.0, warmup_runs=2, warmup_s=0.0)
    cal = rec["calibration"]
    assert cal[0]["number"] == 1 and cal[-1]["duration_ms"] >= 10.0
    assert all(c["duration_ms"] < 10.0 for c in cal[:-1])
    assert rec["number"] == cal[-1]["number"] >= 20
    assert r.calls == 2 + sum(c["number"] for c in cal) + rec["number"] * 4
    # each sample is the per-call time of a repeat
    for s in rec["samples_ms"]:
        assert 0.45 <= s <= 5.0


def test_warmup_by_time(runner):
    runner(call_s=0.001)
    rec = measure(fixed_runs=2, warmup_runs=1, warmup_s=0.05)
    assert rec["warmup_s"] >= 0.05 and rec["warmup_runs"] >= 10


def test_grow_number_rule():
    assert _grow_number(1, 1.0, 100.0) == 111  # ceil(1.1 * 100 / 1)
    assert _grow_number(10, 90.0, 100.0) == 17  # golden-ratio floor: ceil(16.18)
    assert _grow_number(3, 0.0, 100.0) == 30
    assert _grow_number(10**6, 1.0, 1000.0) == 10**6  # capped


def test_record_fields(runner):
    runner()
    rec = measure(fixed_runs=6, warmup_s=0.0, threads=2, seed=7)
    for key in (
        "latency_ms_median",
        "latency_ms_ci95",
        "load_ms",
        "first_inference_ms",
        "state_before",
        "state_after",
        "flags",
        "energy",
        "runtime_version",
    ):
        assert key in rec
    assert rec["threads"] == 2 and rec["seed"] == 7 and rec["energy"] is None
    assert rec["runtime"] == "fake" and rec["runtime_version"] == "0.0"


def test_load_failure_is_runtime_error(runner):
    runner(fail_load=ValueError("bad protobuf"))
    with pytest.raises(MeasurementFailed) as ei:
        measure(fixed_runs=2)
    assert ei.value.status == RUNTIME_ERROR and "bad protobuf" in ei.value.message


def test_missing_runtime_is_runtime_unavailable(runner):
    runner(fail_load=nnflash_agent.runners.RuntimeUnavailable("no onnxruntime"))
    with pytest.raises(MeasurementFailed) as ei:
        measure(fixed_runs=2)
    assert ei.value.status == RUNTIME_UNAVAILABLE


def test_inference_failure_is_runtime_error(runner):
    runner(fail_run_after=3)
    with pytest.raises(MeasurementFailed) as ei:
        measure(fixed_runs=10, warmup_s=0.0)
    assert ei.value.status == RUNTIME_ERROR and "exploded" in ei.value.message


def test_unavailable_meter(runner, tmp_path, monkeypatch):
    runner()
    with pytest.raises(MeasurementFailed) as ei:
        measure(fixed_runs=2, energy="um25c", energy_options={"port": str(tmp_path / "nope")})
    assert ei.value.status == RUNTIME_UNAVAILABLE and "um25c" in ei.value.message


def test_energy_estimate_fields(runner):
    runner(call_s=0.0005)
    rec = measure(fixed_runs=200, warmup_s=0.0, energy="estimate", energy_idle_s=0.1, energy_options={"rate_hz": 100})
    e = rec["energy"]
    assert e["estimated"] is True and e["samples"] >= 3
    assert e["power_w_idle"] is not None and e["idle_samples"] >= 3
    assert e["energy_mj_per_inference"] > 0
    assert e["energy_mj_per_inference_above_idle"] is not None


def test_thermal_gate_timeout_flag(runner, tmp_path):
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("90000\n")
    runner()
    opts = parse_options({"fixed_runs": 2, "thermal_gate_c": 50.0, "thermal_wait_s": 0.1})
    rec = run_measurement("/dev/null", "fake", opts, Telemetry(root=str(tmp_path), vcgencmd=None))
    assert "thermal_gate_timeout" in rec["flags"]
    assert rec["thermal_gate"]["timed_out"] is True


def test_affinity(runner):
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_setaffinity")
    cpu = sorted(os.sched_getaffinity(0))[0]
    before = os.sched_getaffinity(0)
    runner()
    try:
        rec = measure(fixed_runs=2, affinity=[cpu])
        assert rec["affinity"] == [cpu]
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, before)
