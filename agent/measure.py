"""One latency measurement: load, warm up, time, summarize (and optionally meter energy).

Counting rule (the one place it is written down)
------------------------------------------------
1. **Load.** The runtime module is imported (``import_ms``), then the model is loaded
   (``load_ms``: session/interpreter creation and tensor allocation); inputs are drawn once from
   ``numpy.random.default_rng(seed)`` to the model's input shapes/dtypes (dynamic dimensions
   become 1) and reused for every call.
2. **First inference.** The first call is timed on its own (``first_inference_ms``) and is the first
   warm-up call.
3. **Warm-up.** Calls continue until at least ``warmup_runs`` calls in total *and* at least
   ``warmup_s`` seconds of warm-up have passed. None of them is a sample.
4. **Timed phase.** Either
   - ``fixed_runs = k``: ``k`` single calls, each one sample (``number = 1``, ``repeat = k``); or
   - TVM's ``time_evaluator`` style: one *repeat* is ``number`` back-to-back calls timed together,
     and its sample is ``repeat duration / number``. Starting from the requested ``number``
     (default 1), a calibration repeat is run; while it lasts less than ``min_repeat_ms``,
     ``number`` grows to
     ``max(ceil(1.1 * number * min_repeat_ms / duration_ms), ceil(1.618 * number))``
     and calibration repeats again (``min_repeat_ms = 0`` skips calibration). Calibration
     repeats are discarded (they are listed in ``calibration``). Then ``repeat`` repeats are timed.
5. **Samples.** ``samples_ms`` holds the per-inference time of each repeat (``repeat`` values, in
   order); every statistic is computed from them (see :mod:`nnflash_agent.stats`). ``inferences`` =
   ``number * repeat`` timed calls.
6. **Disturbance.** Between two repeats (outside the timed calls) the measuring threads'
   run-queue wait and involuntary context switches are read; a repeat whose threads waited for a
   CPU more than ``wait_share_max`` of its duration is *disturbed*; ``/proc/stat`` is read around
   the timed phase (busy and steal time per CPU, against the process's own CPU time). See
   :mod:`nnflash_agent.disturbance`. ``latency_ms`` is the visit's latency as
   :func:`nnflash_agent.stats.visit_latency_ms` defines it (the median of the undisturbed repeats).
   The measurement is **disturbed** (status ``disturbed``, the record still returned) when more
   than ``disturbed_share_max`` of its repeats were disturbed, when the hypervisor stole more than
   ``wait_share_max`` of the CPUs' time, or when the device throttled or was under-voltage
   (``flags``); ``disturbed_share_max = null`` records the figures and never gates.

Timing uses ``time.perf_counter_ns`` around the calls only. Energy, when a meter is chosen, is the
integral of power over the timed phase (``time.monotonic`` window) divided by ``inferences``,
reported gross and above the idle baseline that is sampled for ``energy_idle_s`` just before the
timed phase.

This module is imported by the serving process for :func:`parse_options` (standard library only at
import time); the heavy work (:func:`run_measurement`) runs in the isolated worker.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional

from nnflash_agent.protocol import BAD_REQUEST, ProtocolError

__all__ = ["OPTION_DEFAULTS", "parse_options", "run_measurement", "MeasurementFailed"]

OPTION_DEFAULTS: Dict[str, Any] = {
    "threads": None,
    "affinity": None,
    "warmup_runs": 1,
    "warmup_s": 0.5,
    "number": 1,
    "repeat": 20,
    "min_repeat_ms": 50.0,
    "fixed_runs": None,
    "seed": 0,
    "energy": "none",
    "energy_options": None,
    "energy_idle_s": 1.0,
    "thermal_gate_c": None,
    "thermal_wait_s": 60.0,
    "isolate": True,
    "timeout_s": 600.0,
    # Justified by figures measured on the development machine: docs/protocol.md, "Disturbed".
    "wait_share_max": 0.03,
    "disturbed_share_max": 0.2,
}
TEST_FAULTS = ("exit", "kill", "hang", "raise")
MAX_NUMBER = 1_000_000


class MeasurementFailed(Exception):
    """A measurement failed in a way the caller reports as a status (not a bug)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(msg: str) -> ProtocolError:
    return ProtocolError(BAD_REQUEST, msg)


def _int(args: Dict[str, Any], key: str, lo: int, hi: int, optional: bool = False) -> Any:
    value = args[key]
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"'{key}' must be an integer" + (" or null" if optional else ""))
    if not lo <= value <= hi:
        raise _bad(f"'{key}' must be in [{lo}, {hi}], got {value}")
    return value


def _float(args: Dict[str, Any], key: str, lo: float, hi: float, optional: bool = False) -> Any:
    value = args[key]
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _bad(f"'{key}' must be a number" + (" or null" if optional else ""))
    if not lo <= value <= hi:
        raise _bad(f"'{key}' must be in [{lo}, {hi}], got {value}")
    return float(value)


def parse_options(raw: Dict[str, Any], allow_test_hooks: bool = False) -> Dict[str, Any]:
    """Validate measurement options (the measure verb's args minus artifact/runtime), fill defaults.
    Raises :class:`ProtocolError` (``bad_request``) naming the offending field."""
    allowed = set(OPTION_DEFAULTS)
    if allow_test_hooks:
        allowed.add("_test_fault")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _bad(f"unknown measure argument(s): {', '.join(unknown)}")
    args = dict(OPTION_DEFAULTS)
    args.update(raw)
    cpus = os.cpu_count() or 1
    opts: Dict[str, Any] = {
        "threads": _int(args, "threads", 1, 256, optional=True),
        "warmup_runs": _int(args, "warmup_runs", 0, 1_000_000),
        "warmup_s": _float(args, "warmup_s", 0.0, 3600.0),
        "number": _int(args, "number", 1, MAX_NUMBER),
        "repeat": _int(args, "repeat", 1, 100_000),
        "min_repeat_ms": _float(args, "min_repeat_ms", 0.0, 60_000.0),
        "fixed_runs": _int(args, "fixed_runs", 1, 1_000_000, optional=True),
        "seed": _int(args, "seed", 0, 2**63 - 1),
        "energy_idle_s": _float(args, "energy_idle_s", 0.0, 600.0),
        "thermal_gate_c": _float(args, "thermal_gate_c", 0.0, 150.0, optional=True),
        "thermal_wait_s": _float(args, "thermal_wait_s", 0.0, 3600.0),
        "timeout_s": _float(args, "timeout_s", 0.1, 86_400.0),
        "wait_share_max": _float(args, "wait_share_max", 0.0, 1.0),
        "disturbed_share_max": _float(args, "disturbed_share_max", 0.0, 1.0, optional=True),
    }
    affinity = args["affinity"]
    if affinity is not None:
        if (
            not isinstance(affinity, list)
            or not affinity
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in affinity)
        ):
            raise _bad("'affinity' must be a non-empty list of CPU ids")
        if any(c < 0 or c >= max(cpus, 1024) for c in affinity):
            raise _bad(f"'affinity' CPU ids must be in [0, {cpus - 1}]")
        if not hasattr(os, "sched_setaffinity"):
            raise _bad("'affinity' is not supported on this platform")
        affinity = sorted(set(affinity))
    opts["affinity"] = affinity
    energy = args["energy"]
    if energy is None:
        energy = "none"
    if not isinstance(energy, str):
        raise _bad("'energy' must be a meter name")
    from nnflash_agent.energy import METERS

    if energy not in METERS:
        raise _bad(f"unknown energy meter {energy!r} (known: {', '.join(METERS)})")
    opts["energy"] = energy
    eopts = args["energy_options"]
    if eopts is not None and not isinstance(eopts, dict):
        raise _bad("'energy_options' must be an object")
    opts["energy_options"] = eopts or {}
    from nnflash_agent.energy import MeterError, make_meter

    try:  # constructing a meter checks its options; no hardware is touched before open()
        make_meter(energy, opts["energy_options"])
    except MeterError as exc:
        raise _bad(str(exc)) from None
    if not isinstance(args["isolate"], bool):
        raise _bad("'isolate' must be a boolean")
    opts["isolate"] = args["isolate"]
    fault = raw.get("_test_fault")
    if fault is not None:
        if fault not in TEST_FAULTS:
            raise _bad(f"'_test_fault' must be one of {TEST_FAULTS}")
        opts["_test_fault"] = fault
    return opts


def _timed_calls(run: Any, count: int) -> int:
    """Duration in ns of ``count`` back-to-back calls."""
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(count):
        run()
    return clock() - t0


def _grow_number(number: int, duration_ms: float, min_repeat_ms: float) -> int:
    """TVM's rule: aim at min_repeat_ms (with a 10% margin), grow at least by the golden ratio."""
    if duration_ms <= 0:
        target = number * 10
    else:
        target = math.ceil(number * min_repeat_ms / duration_ms * 1.1)
    return int(min(MAX_NUMBER, max(target, math.ceil(number * 1.618), number + 1)))


def _test_fault(kind: str) -> None:
    import signal

    if kind == "exit":
        os._exit(3)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "raise":
        raise RuntimeError("test fault: deliberate runtime error")


def run_measurement(
    model_path: str,
    runtime: str,
    opts: Dict[str, Any],
    telemetry: Optional[Any] = None,
) -> Dict[str, Any]:
    """Measure one model with one runtime; returns the measurement record (see module docstring).

    Raises :class:`MeasurementFailed` with a protocol status for expected failures (runtime missing,
    runtime refuses the model, meter unavailable). Runs in the isolated worker by default.
    """
    from nnflash_agent.disturbance import CpuWindow, RepeatWatch
    from nnflash_agent.energy import MeterError, make_meter
    from nnflash_agent.protocol import RUNTIME_ERROR, RUNTIME_UNAVAILABLE
    from nnflash_agent.runners import RuntimeUnavailable, make_runner
    from nnflash_agent.stats import summarize, visit_latency_ms, visit_spread
    from nnflash_agent.telemetry import Telemetry, compare_states

    tel = telemetry if telemetry is not None else Telemetry()
    flags: List[str] = []
    started_unix = time.time()
    started = time.monotonic()

    if opts.get("affinity"):
        try:
            os.sched_setaffinity(0, opts["affinity"])
        except (OSError, ValueError) as exc:
            raise MeasurementFailed(BAD_REQUEST, f"cannot set CPU affinity: {exc}") from None

    try:
        meter = make_meter(opts.get("energy"), opts.get("energy_options"))
    except MeterError as exc:
        raise MeasurementFailed(BAD_REQUEST, str(exc)) from None

    # 1. load
    runner = make_runner(runtime)
    try:
        t_import = time.perf_counter_ns()
        runner.import_runtime()
        t0 = time.perf_counter_ns()
        import_ms = (t0 - t_import) / 1e6
        runner.load(model_path, opts.get("threads"))
    except RuntimeUnavailable as exc:
        raise MeasurementFailed(RUNTIME_UNAVAILABLE, str(exc)) from None
    except Exception as exc:
        raise MeasurementFailed(
            RUNTIME_ERROR, f"{runtime} could not load the model: {type(exc).__name__}: {exc}"
        ) from None
    load_ms = (time.perf_counter_ns() - t0) / 1e6

    try:
        inputs = runner.input_specs()
        runner.prepare(int(opts.get("seed", 0)))
    except Exception as exc:
        raise MeasurementFailed(RUNTIME_ERROR, f"cannot build inputs: {type(exc).__name__}: {exc}") from None

    # thermal gate, then the state the run starts from
    gate = None
    if opts.get("thermal_gate_c") is not None:
        gate = tel.wait_cool(float(opts["thermal_gate_c"]), float(opts.get("thermal_wait_s", 60.0)))
        if gate["timed_out"]:
            flags.append("thermal_gate_timeout")
    state_before = tel.state()

    run = runner.run
    try:
        if opts.get("_test_fault"):
            _test_fault(opts["_test_fault"])
        # 2. first inference
        first_ns = _timed_calls(run, 1)
        # 3. warm-up
        warm_calls = 1
        warm_start = time.monotonic()
        warm_until = warm_start + float(opts.get("warmup_s", 0.0))
        while warm_calls < int(opts.get("warmup_runs", 1)) or time.monotonic() < warm_until:
            run()
            warm_calls += 1
        warmup_s = time.monotonic() - warm_start

        # 4. calibrate number
        fixed = opts.get("fixed_runs")
        min_repeat_ms = float(opts.get("min_repeat_ms", 0.0))
        calibration: List[Dict[str, float]] = []
        if fixed:
            number, repeat = 1, int(fixed)
        else:
            number, repeat = int(opts.get("number", 1)), int(opts.get("repeat", 1))
            if min_repeat_ms > 0:
                while number < MAX_NUMBER:
                    dur_ms = _timed_calls(run, number) / 1e6
                    calibration.append({"number": number, "duration_ms": dur_ms})
                    if dur_ms >= min_repeat_ms:
                        break
                    number = _grow_number(number, dur_ms, min_repeat_ms)

        # idle baseline just before the timed phase, same state (model loaded, warm)
        energy: Optional[Dict[str, Any]] = None
        idle_window = None
        if meter is not None:
            try:
                meter.open()
                idle_s = float(opts.get("energy_idle_s", 1.0))
                if idle_s > 0:
                    meter.start()
                    i0 = time.monotonic()
                    time.sleep(idle_s)
                    i1 = time.monotonic()
                    idle_trace = meter.stop()
                    idle_window = (idle_trace, i0, i1)
                meter.start()
            except MeterError as exc:
                meter.close()
                raise MeasurementFailed(RUNTIME_UNAVAILABLE, f"energy meter: {exc}") from None

        # 5. timed phase, 6. watched repeat by repeat
        samples_ms: List[float] = []
        durations_ns: List[int] = []
        watch = RepeatWatch(float(opts.get("wait_share_max", OPTION_DEFAULTS["wait_share_max"])))
        window = CpuWindow(opts.get("affinity"))
        window.start()
        w0 = time.monotonic()
        calls = 1 if fixed else number
        for _ in range(repeat):
            watch.start()
            d_ns = _timed_calls(run, calls)
            watch.stop(d_ns)
            durations_ns.append(d_ns)
            samples_ms.append(d_ns / 1e6 / calls)
        w1 = time.monotonic()
        cpu_window = window.stop()

        if meter is not None:
            try:
                trace = meter.stop()
                energy = _energy_record(meter, trace, w0, w1, number * repeat, idle_window)
            except MeterError as exc:
                flags.append("energy_failed")
                energy = {"meter": meter.name, "error": str(exc)}
            finally:
                meter.close()
    except MeasurementFailed:
        raise
    except Exception as exc:
        raise MeasurementFailed(
            RUNTIME_ERROR, f"{runtime} failed during inference: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        runner.close()

    state_after = tel.state()
    flags.extend(f for f in compare_states(state_before, state_after) if f not in flags)
    disturbance = watch.record(durations_ns)
    disturbance["visit"] = cpu_window
    disturbance["reason"] = disturbed_reason(disturbance, flags, opts)
    disturbance["spread"] = visit_spread(samples_ms, disturbance["repeat_disturbed"])

    record: Dict[str, Any] = {}
    record.update(summarize(samples_ms))
    record.update(
        {
            "latency_ms": visit_latency_ms(samples_ms, disturbance["repeat_disturbed"]),
            "disturbance": disturbance,
            "samples_ms": samples_ms,
            "number": number,
            "repeat": repeat,
            "inferences": number * repeat,
            "fixed_runs": fixed,
            "min_repeat_ms": None if fixed else min_repeat_ms,
            "calibration": calibration,
            "warmup_runs": warm_calls,
            "warmup_s": warmup_s,
            "import_ms": import_ms,
            "load_ms": load_ms,
            "first_inference_ms": first_ns / 1e6,
            "timed_s": w1 - w0,
            "runtime": runtime,
            "runtime_version": runner.version,
            "threads": opts.get("threads"),
            "affinity": opts.get("affinity"),
            "seed": int(opts.get("seed", 0)),
            "inputs": [{"name": s["name"], "shape": s["shape"], "dtype": s["dtype"]} for s in inputs],
            "thermal_gate": gate,
            "state_before": state_before,
            "state_after": state_after,
            "flags": flags,
            "energy": energy,
            "started_unix": started_unix,
            "duration_s": time.monotonic() - started,
            "pid": os.getpid(),
            "max_rss_mb": _max_rss_mb(),
        }
    )
    return record


def disturbed_reason(disturbance: Dict[str, Any], flags: List[str], opts: Dict[str, Any]) -> Optional[str]:
    """Why the measurement is ``disturbed`` (one line), or None when it passes the gate (see the
    module docstring, step 6)."""
    share_max = opts.get("disturbed_share_max", OPTION_DEFAULTS["disturbed_share_max"])
    if share_max is None:
        return None
    wait_max = float(opts.get("wait_share_max", OPTION_DEFAULTS["wait_share_max"]))
    reasons = []
    n = len(disturbance.get("repeat_disturbed") or [])
    k = int(disturbance.get("disturbed_repeats") or 0)
    if n and k / n > share_max:
        reasons.append(
            f"{k} of {n} repeats waited for a CPU more than {wait_max:.0%} of their time "
            f"(more than {share_max:.0%} of the repeats)"
        )
    steal = (disturbance.get("visit") or {}).get("steal_share")
    if steal is not None and steal > wait_max:
        reasons.append(f"the hypervisor stole {steal:.1%} of the CPUs' time")
    for flag, text in (("throttled", "the SoC throttled"), ("under_voltage", "under-voltage")):
        if flag in flags:
            reasons.append(text)
    return "; ".join(reasons) or None


def _max_rss_mb() -> Optional[float]:
    """Peak resident memory of this process (the worker: runtime + model), in MiB."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0  # Linux reports KiB


def _energy_record(meter: Any, trace: Any, w0: float, w1: float, inferences: int, idle: Any) -> Dict[str, Any]:
    window_s = w1 - w0
    gross_j = trace.energy_j(w0, w1)
    rec: Dict[str, Any] = meter.describe()
    n_samples = trace.samples_in(w0, w1)
    rec.update(
        {
            "window_s": window_s,
            "energy_j": gross_j,
            "power_w_mean": gross_j / window_s if window_s > 0 else None,
            "energy_mj_per_inference": gross_j * 1e3 / inferences,
            "samples": n_samples,
            "sample_rate_hz": n_samples / window_s if window_s > 0 else None,
            "window_covered": trace.coverage(w0, w1),
            "power_w_idle": None,
            "idle_s": None,
            "idle_samples": None,
            "energy_mj_per_inference_above_idle": None,
        }
    )
    if idle is not None:
        itrace, i0, i1 = idle
        try:
            p_idle = itrace.mean_power_w(i0, i1)
        except Exception:
            p_idle = None
        rec["idle_s"] = i1 - i0
        rec["idle_samples"] = itrace.samples_in(i0, i1)
        if p_idle is not None:
            rec["power_w_idle"] = p_idle
            rec["energy_mj_per_inference_above_idle"] = (gross_j - p_idle * window_s) * 1e3 / inferences
    return rec
