"""Was the device quiet while a model was timed? Figures from Linux /proc, per repeat and per visit.

Per repeat (cheap enough to read between two repeats, outside the timed calls):

- **run-queue wait** of the measuring process's threads: the second field of
  ``/proc/<pid>/task/<tid>/schedstat`` is the time in nanoseconds the thread spent runnable but not
  running (waiting for a CPU someone else held). Summed over the threads, divided by the repeat's
  duration it is the repeat's ``wait_share``: a repeat whose threads waited a share ``w`` of its
  time was slowed by about ``w / (1 - w)``.
- **involuntary context switches** (``nonvoluntary_ctxt_switches`` in
  ``/proc/<pid>/task/<tid>/status``): how often the scheduler took a CPU away from the threads.

A repeat is *disturbed* when its ``wait_share`` is above ``wait_share_max``; on a kernel without
schedstat (the file is missing: no ``CONFIG_SCHED_INFO``) the involuntary switches decide instead
(at least :data:`NIVCSW_FALLBACK` in one repeat).

Per visit (the whole timed phase), from ``/proc/stat`` on the CPUs the process may run on:

- ``busy_s`` and ``steal_s`` per CPU (``/proc/stat`` counts in ticks of ``1/USER_HZ`` s, 10 ms:
  too coarse for one repeat, fine for a visit);
- ``own_cpu_s``: the measuring process's own CPU time over the same window, so
  ``foreign_busy_s = busy - own`` is what everyone else ran on those CPUs (a figure only: with
  ``threads=1`` on a multi-core device a neighbour on another core does not compete);
- ``steal_share``: time a hypervisor gave the virtual CPUs to someone else. The guest's scheduler
  cannot see it (the thread "runs" while its CPU is stolen), so run-queue wait misses it; a visit
  whose ``steal_share`` passes ``wait_share_max`` is disturbed.

Neighbours that leave no trace here: an SMT sibling (another hardware thread on the same core runs
something else; both count as running) and contention for memory bandwidth or the shared cache.
They slow every repeat a little; the spread of the repeats (``latency_ms_std`` against the model's
usual spread over visits) is what can reveal them, see docs/protocol.md.

Everything degrades: a missing or unreadable file gives ``None`` for its figures, never an
exception. ``root`` prefixes every path (tests pass a fake tree).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["RepeatWatch", "CpuWindow", "NIVCSW_FALLBACK", "read_proc_stat", "read_threads"]

#: Without schedstat: a repeat with at least this many involuntary context switches is disturbed.
NIVCSW_FALLBACK = 3


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_threads(task_dir: str) -> Tuple[Optional[int], Optional[int], int]:
    """``(wait_ns, nivcsw, threads)`` summed over the threads in ``task_dir``
    (``/proc/<pid>/task``); ``wait_ns`` is None when no thread has a readable schedstat, ``nivcsw``
    None when no status has the field. Threads that end between listing and reading are skipped."""
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return None, None, 0
    wait: Optional[int] = None
    nivcsw: Optional[int] = None
    for tid in tids:
        text = _read(os.path.join(task_dir, tid, "schedstat"))
        if text:
            parts = text.split()
            if len(parts) >= 2 and parts[1].isdigit():
                wait = (wait or 0) + int(parts[1])
        status = _read(os.path.join(task_dir, tid, "status"))
        if status:
            for line in status.splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    value = line.split(":", 1)[1].strip()
                    if value.isdigit():
                        nivcsw = (nivcsw or 0) + int(value)
                    break
    return wait, nivcsw, len(tids)


class RepeatWatch:
    """Snapshots of the measuring process's threads around every repeat (see the module docstring)."""

    def __init__(self, wait_share_max: float, *, root: str = "/", pid: str = "self") -> None:
        self.wait_share_max = float(wait_share_max)
        self.task_dir = os.path.join(root, "proc", str(pid), "task")
        self.wait_ns: List[Optional[int]] = []
        self.nivcsw: List[Optional[int]] = []
        self.disturbed: List[bool] = []
        self._before: Tuple[Optional[int], Optional[int], int] = (None, None, 0)
        self.max_threads = 0

    def start(self) -> None:
        self._before = read_threads(self.task_dir)

    def stop(self, duration_ns: int) -> bool:
        """Close the repeat that lasted ``duration_ns``; returns whether it was disturbed."""
        after = read_threads(self.task_dir)
        (w0, n0, _), (w1, n1, k) = self._before, after
        self.max_threads = max(self.max_threads, k)
        wait = w1 - w0 if w0 is not None and w1 is not None and w1 >= w0 else None
        switches = n1 - n0 if n0 is not None and n1 is not None and n1 >= n0 else None
        if wait is not None:
            bad = duration_ns > 0 and wait > self.wait_share_max * duration_ns
        elif switches is not None:
            bad = switches >= NIVCSW_FALLBACK
        else:
            bad = False
        self.wait_ns.append(wait)
        self.nivcsw.append(switches)
        self.disturbed.append(bool(bad))
        self._before = after
        return bool(bad)

    def record(self, durations_ns: Sequence[int]) -> Dict[str, Any]:
        n = len(self.disturbed)
        shares = [(w / d if w is not None and d > 0 else None) for w, d in zip(self.wait_ns, durations_ns)]
        known = [s for s in shares if s is not None]
        k = sum(self.disturbed)
        return {
            "source": "schedstat" if known else ("status" if any(x is not None for x in self.nivcsw) else None),
            "wait_share_max": self.wait_share_max,
            "repeat_wait_ms": [None if w is None else w / 1e6 for w in self.wait_ns],
            "repeat_wait_share": shares,
            "repeat_nivcsw": list(self.nivcsw),
            "repeat_disturbed": list(self.disturbed),
            "disturbed_repeats": k,
            "disturbed_share": k / n if n else 0.0,
            "wait_share_max_seen": max(known) if known else None,
            "threads": self.max_threads,
        }


def read_proc_stat(path: str) -> Optional[Dict[int, Tuple[int, int, int]]]:
    """``{cpu: (busy_ticks, steal_ticks, total_ticks)}`` from ``/proc/stat`` (None if unreadable).
    busy = user + nice + system + irq + softirq (guest time is already inside user and nice);
    total adds idle, iowait and steal."""
    text = _read(path)
    if text is None:
        return None
    out: Dict[int, Tuple[int, int, int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        parts = line.split()
        name = parts[0][3:]
        if not name.isdigit():
            continue
        try:
            vals = [int(x) for x in parts[1:9]]
        except ValueError:
            continue
        vals += [0] * (8 - len(vals))
        user, nice, system, idle, iowait, irq, softirq, steal = vals
        busy = user + nice + system + irq + softirq
        out[int(name)] = (busy, steal, busy + idle + iowait + steal)
    return out


def _clk_tck() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


class CpuWindow:
    """``/proc/stat`` and the process's own CPU time around one visit's timed phase."""

    def __init__(self, cpus: Optional[Sequence[int]] = None, *, root: str = "/") -> None:
        self.path = os.path.join(root, "proc", "stat")
        if cpus is None:
            try:
                cpus = sorted(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = None
        self.cpus = list(cpus) if cpus is not None else None
        self._t0 = 0.0
        self._own0 = 0.0
        self._stat0: Optional[Dict[int, Tuple[int, int, int]]] = None

    @staticmethod
    def _own() -> float:
        t = os.times()
        return float(t.user + t.system)

    def start(self) -> None:
        self._stat0 = read_proc_stat(self.path)
        self._own0 = self._own()
        self._t0 = time.monotonic()

    def stop(self) -> Dict[str, Any]:
        window_s = time.monotonic() - self._t0
        own = self._own() - self._own0
        stat1 = read_proc_stat(self.path)
        rec: Dict[str, Any] = {"window_s": window_s, "own_cpu_s": own, "cpus": self.cpus}
        if self._stat0 is None or stat1 is None:
            rec.update(busy_s=None, steal_s=None, foreign_busy_s=None, foreign_share=None, steal_share=None)
            return rec
        hz = _clk_tck()
        cpus = [c for c in (self.cpus if self.cpus is not None else sorted(stat1)) if c in stat1 and c in self._stat0]
        busy = {c: (stat1[c][0] - self._stat0[c][0]) / hz for c in cpus}
        steal = {c: (stat1[c][1] - self._stat0[c][1]) / hz for c in cpus}
        span = {c: (stat1[c][2] - self._stat0[c][2]) / hz for c in cpus}
        total_busy = sum(busy.values())
        total_span = sum(span.values()) or window_s * max(len(cpus), 1)
        foreign = max(0.0, total_busy - own)
        rec.update(
            busy_s={str(c): busy[c] for c in cpus},
            steal_s={str(c): steal[c] for c in cpus},
            foreign_busy_s=foreign,
            foreign_share=foreign / total_span if total_span > 0 else None,
            steal_share=sum(steal.values()) / total_span if total_span > 0 else None,
        )
        return rec
