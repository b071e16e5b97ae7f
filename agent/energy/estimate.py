"""The ``estimate`` meter: no power sensor, a model.

CPU utilization is sampled with psutil (per-CPU busy fraction from ``cpu_times`` deltas) and mapped
through a Raspberry Pi 3B power model (REFERENCE.md section 3: about 1.2 W idle, about 4 W with four
busy cores), linear in the number of busy cores::

    P = idle_w + (busy_w - idle_w) * min(busy_cores, cores) / cores

It is an estimate, not a measurement: results always carry ``"estimated": true``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from nnflash_agent.energy.base import MeterError, PowerTrace, SamplingMeter

__all__ = ["EstimateMeter", "busy_cores"]


def busy_cores(prev: List[Any], cur: List[Any]) -> float:
    """Sum over CPUs of the busy fraction between two ``psutil.cpu_times(percpu=True)`` readings."""
    total = 0.0
    for a, b in zip(prev, cur):
        idle_a = a.idle + getattr(a, "iowait", 0.0)
        idle_b = b.idle + getattr(b, "iowait", 0.0)
        all_a = sum(a) - getattr(a, "guest", 0.0) - getattr(a, "guest_nice", 0.0)
        all_b = sum(b) - getattr(b, "guest", 0.0) - getattr(b, "guest_nice", 0.0)
        span = all_b - all_a
        if span <= 0:
            continue
        total += min(1.0, max(0.0, 1.0 - (idle_b - idle_a) / span))
    return total


class EstimateMeter(SamplingMeter):
    name = "estimate"
    estimated = True

    def __init__(
        self,
        rate_hz: float = 20.0,
        idle_w: float = 1.2,
        busy_w: float = 4.0,
        cores: int = 4,
    ) -> None:
        super().__init__(rate_hz)
        if not (0 <= idle_w <= busy_w):
            raise MeterError("estimate: need 0 <= idle_w <= busy_w")
        if int(cores) < 1:
            raise MeterError("estimate: cores must be >= 1")
        self.idle_w = float(idle_w)
        self.busy_w = float(busy_w)
        self.cores = int(cores)
        self._prev: Optional[List[Any]] = None
        self._prev_t = 0.0

    def power_from_busy(self, busy: float) -> float:
        busy = min(max(busy, 0.0), float(self.cores))
        return self.idle_w + (self.busy_w - self.idle_w) * busy / self.cores

    def sample(self, trace: PowerTrace) -> None:
        import psutil

        cur = psutil.cpu_times(percpu=True)
        now = time.monotonic()
        if self._prev is not None:
            # The power over the interval just ended, stamped at its midpoint.
            trace.add((self._prev_t + now) / 2.0, self.power_from_busy(busy_cores(self._prev, cur)))
        self._prev, self._prev_t = cur, now

    def start(self) -> None:
        self._prev = None
        super().start()

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["model"] = {"idle_w": self.idle_w, "busy_w": self.busy_w, "cores": self.cores}
        return d
