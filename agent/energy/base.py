"""Power meters: the common interface, the power trace and the energy of a window.

A meter samples power in a background thread between :meth:`Meter.start` and :meth:`Meter.stop`;
timestamps come from ``time.monotonic()``. The energy of a window ``[t0, t1]`` is the trapezoidal
integral of ``P(t)`` over the window (the trace is linearly interpolated at ``t0`` and ``t1``);
for a meter with a cumulative energy counter (RAPL) the counter itself is interpolated instead.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["MeterError", "PowerTrace", "Meter", "SamplingMeter"]


class MeterError(Exception):
    """A meter cannot be opened or read (missing device, wrong wiring, bad option)."""


class PowerTrace:
    """Samples ``(t_monotonic_s, power_w)``; optionally cumulative energy ``(t, energy_j)``."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self.watts: List[float] = []
        self.cum_times: List[float] = []
        self.cum_joules: List[float] = []

    def add(self, t: float, power_w: float) -> None:
        self.times.append(t)
        self.watts.append(power_w)

    def add_energy(self, t: float, energy_j: float) -> None:
        self.cum_times.append(t)
        self.cum_joules.append(energy_j)

    def __len__(self) -> int:
        return max(len(self.times), len(self.cum_times))

    @staticmethod
    def _interp(ts: List[float], ys: List[float], t: float) -> float:
        if t <= ts[0]:
            return ys[0]
        if t >= ts[-1]:
            return ys[-1]
        i = bisect_left(ts, t)
        t0, t1 = ts[i - 1], ts[i]
        if t1 == t0:
            return ys[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (t - t0) / (t1 - t0)

    def samples_in(self, t0: float, t1: float) -> int:
        ts = self.times or self.cum_times
        return sum(1 for t in ts if t0 <= t <= t1)

    def energy_j(self, t0: float, t1: float) -> float:
        """Energy over ``[t0, t1]`` in joules (needs at least two samples)."""
        if t1 < t0:
            raise ValueError("window ends before it starts")
        if len(self.cum_times) >= 2:
            ts, es = self.cum_times, self.cum_joules
            return self._interp(ts, es, t1) - self._interp(ts, es, t0)
        ts, ps = self.times, self.watts
        if len(ts) < 2:
            raise MeterError(f"too few power samples ({len(ts)}) to integrate")
        # Build the clipped polyline: t0, the samples strictly inside, t1.
        pts: List[Tuple[float, float]] = [(t0, self._interp(ts, ps, t0))]
        pts += [(t, p) for t, p in zip(ts, ps) if t0 < t < t1]
        pts.append((t1, self._interp(ts, ps, t1)))
        return sum((tb - ta) * (pa + pb) / 2.0 for (ta, pa), (tb, pb) in zip(pts, pts[1:]))

    def mean_power_w(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            raise MeterError("empty window")
        return self.energy_j(t0, t1) / (t1 - t0)

    def coverage(self, t0: float, t1: float) -> bool:
        """True when the samples span the whole window (no extrapolation at the ends)."""
        ts = self.cum_times if len(self.cum_times) >= 2 else self.times
        return bool(ts) and ts[0] <= t0 and ts[-1] >= t1


class Meter:
    """Interface. Subclasses set ``name`` and ``estimated`` and implement start/stop."""

    name = "meter"
    estimated = False

    def open(self) -> None:
        """Acquire the device (raise :class:`MeterError` with a clear message if impossible)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> PowerTrace:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device."""

    def describe(self) -> Dict[str, Any]:
        return {"meter": self.name, "estimated": self.estimated}

    def __enter__(self) -> Meter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SamplingMeter(Meter):
    """A meter read by polling :meth:`read_power_w` at ``rate_hz`` in a daemon thread.

    Sampling is paced against absolute deadlines so that a slow read does not drift the rate; the
    achieved rate is what the trace reports (sample count / span), not the requested one.
    """

    def __init__(self, rate_hz: float = 100.0) -> None:
        if not (rate_hz > 0 and rate_hz <= 10000):
            raise MeterError(f"rate_hz must be in (0, 10000], got {rate_hz!r}")
        self.rate_hz = float(rate_hz)
        self._thread: Optional[threading.Thread] = None
        self._stop_evt = threading.Event()
        self._trace = PowerTrace()
        self._error: Optional[BaseException] = None

    def read_power_w(self) -> float:
        raise NotImplementedError

    def sample(self, trace: PowerTrace) -> None:
        """Take one sample into ``trace`` (override for counter meters)."""
        p = self.read_power_w()
        trace.add(time.monotonic(), p)

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        try:
            while not self._stop_evt.is_set():
                self.sample(self._trace)
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop_evt.wait(delay)
                else:
                    next_t = time.monotonic()  # fell behind: do not burst
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def start(self) -> None:
        self._trace = PowerTrace()
        self._error = None
        self._stop_evt.clear()
        self.sample(self._trace)  # fail fast, in the caller's thread
        self._thread = threading.Thread(target=self._loop, name=f"meter-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> PowerTrace:
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._error is not None:
            raise MeterError(f"{self.name}: sampling failed: {self._error}")
        self.sample(self._trace)  # close the window with a final sample
        return self._trace
