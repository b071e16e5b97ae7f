"""The ``rapl`` meter: Linux powercap energy counters (``/sys/class/powercap/intel-rapl:N``).

Reads ``energy_uj`` of the top-level zones (packages; sub-zones such as ``intel-rapl:0:0`` are
parts of them and are not added) and unwraps each counter with ``max_energy_range_uj``. The
energy of a window comes from the cumulative counter, interpolated at the window's ends. ``root`` is
injectable (tests use a fake tree). Reading ``energy_uj`` usually needs root since Linux 5.10.
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Any, Dict, List, Optional

from nnflash_agent.energy.base import MeterError, PowerTrace, SamplingMeter

__all__ = ["RaplMeter", "unwrap"]

_TOP_ZONE = re.compile(r"^[a-z-]+rapl:\d+$")


def unwrap(prev_raw: int, raw: int, max_range: int) -> int:
    """Delta of a counter that wraps at ``max_range`` (one wrap at most between two reads)."""
    delta = raw - prev_raw
    if delta < 0:
        delta += max_range + 1 if max_range > 0 else 0
    return delta


class _Zone:
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = _read_text(os.path.join(path, "name")) or os.path.basename(path)
        self.max_range = _read_int(os.path.join(path, "max_energy_range_uj")) or 0
        self.prev: Optional[int] = None
        self.total_uj = 0

    def read(self) -> int:
        value = _read_int(os.path.join(self.path, "energy_uj"))
        if value is None:
            raise MeterError(f"rapl: cannot read {self.path}/energy_uj (needs root?)")
        return value


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class RaplMeter(SamplingMeter):
    name = "rapl"

    def __init__(self, rate_hz: float = 50.0, root: str = "/", zones: Optional[List[str]] = None) -> None:
        super().__init__(rate_hz)
        self.base = os.path.join(root, "sys/class/powercap")
        self.zone_filter = zones
        self._zones: List[_Zone] = []

    def open(self) -> None:
        if not os.path.isdir(self.base):
            raise MeterError(f"rapl: no powercap interface at {self.base}")
        paths = [
            p for p in sorted(glob.glob(os.path.join(self.base, "*rapl:*"))) if _TOP_ZONE.match(os.path.basename(p))
        ]
        zones = [_Zone(p) for p in paths]
        if self.zone_filter:
            zones = [z for z in zones if z.name in self.zone_filter]
        if not zones:
            raise MeterError(f"rapl: no RAPL zone under {self.base}")
        for z in zones:
            z.read()  # fail now if unreadable
        self._zones = zones

    def sample(self, trace: PowerTrace) -> None:
        if not self._zones:
            self.open()
        t = time.monotonic()
        for z in self._zones:
            raw = z.read()
            if z.prev is not None:
                z.total_uj += unwrap(z.prev, raw, z.max_range)
            z.prev = raw
        trace.add_energy(t, sum(z.total_uj for z in self._zones) / 1e6)

    def start(self) -> None:
        for z in self._zones:
            z.prev, z.total_uj = None, 0
        super().start()

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["zones"] = [z.name for z in self._zones]
        return d
