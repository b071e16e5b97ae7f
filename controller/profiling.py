"""Running profiling campaigns for a command: the database's lifetime, Ctrl-C, passes.

:class:`~nnflash.controller.campaign.Campaign` measures; this module is what every command that
measures does around it (``nnflash profile``, ``run`` and ``calibrate`` today), so that the CLI
modules only parse, call and print:

- :func:`run_campaign` opens the results database, runs one campaign and closes the database. On
  the main thread, Ctrl-C (SIGINT) stops the campaign cleanly while it runs: the first finishes the
  measurements in flight and stores them, the second abandons them (they stay in the device's
  journal); the campaign's result then says ``interrupted``.
- :func:`profile_in_passes` measures models in several passes, one campaign per pass (pass ``k``
  takes visit ``k`` of every model, so the visits of one model are a whole pass apart in time), and
  reads back what the database holds for them.

What happens is reported to a :class:`CampaignObserver` (every method a no-op by default); the CLI
draws its progress bars from one. Devices and connection options come from the caller: configuration
files are read in the CLI layer.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnflash.controller.campaign import Campaign, CampaignResult, ConnectFn, MeasureSettings
from nnflash.controller.inventory import Device
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport import make_connection
from nnflash.models.spec import AnySpec

__all__ = ["PROFILE_PASSES", "CampaignObserver", "PassesResult", "profile_in_passes", "run_campaign", "stored_rows"]

#: ``nnflash profile``'s visits per model. On the development VM (quiet, 1 thread, docs/protocol.md)
#: one visit's latency differs from the median of five visits in another run by more than 8% for
#: 7-10% of the models (standard deviation 3.0%); the median of three visits does for 4-5% (1.7-2.0%),
#: the median of five no better (1.7%). Three is where more visits stop paying.
PROFILE_PASSES = 3


class CampaignObserver:
    """What a running campaign reports; override the methods you need (each is a no-op here).

    ``planned`` is called on the thread that runs the campaign, ``measured`` and ``event`` on its
    device workers (several at once: guard what they share), ``stopping`` in the SIGINT handler,
    ``closed`` last, on the thread that runs the campaign.
    """

    def planned(self, todo: Mapping[str, Sequence[str]]) -> None:
        """The spec ids each device will measure, once, before any measurement starts."""

    def measured(self, row: dict[str, Any]) -> None:
        """One measurement, already stored (the campaign's result row; ``status`` ``ok`` or not)."""

    def event(self, device: str, event: str) -> None:
        """``done`` (one more model finished on ``device``), ``reconnecting``, ``reconnected``, or
        ``error`` (the device is unreachable; its worker stopped)."""

    def stopping(self, abandon: bool) -> None:
        """Ctrl-C: ``abandon`` is False on the first (measurements in flight finish and are stored),
        True on a later one (they are abandoned)."""

    def closed(self) -> None:
        """The campaign is over (also when it ended with an exception)."""


@contextmanager
def _sigint_stops(camp: Campaign, observer: CampaignObserver) -> Iterator[None]:
    """While the block runs, SIGINT calls ``camp.stop()`` (the previous handler is put back after).
    Signals are delivered to the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        observer.stopping(camp.stop_requested)
        camp.stop()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_campaign(
    specs: Sequence[AnySpec],
    devices: Sequence[Device],
    settings: MeasureSettings,
    db_path: str | Path,
    artifacts_dir: str | Path,
    *,
    connect: ConnectFn = make_connection,
    max_attempts: int = 2,
    args: Optional[dict[str, Any]] = None,
    visit: int = 0,
    observer: Optional[CampaignObserver] = None,
    handle_sigint: bool = True,
    max_disturbed: int = 3,
) -> CampaignResult:
    """Run one campaign over ``specs`` on ``devices`` and return its result.

    Opens the results database at ``db_path`` for the campaign and closes it after; exported
    files are cached under ``artifacts_dir``. ``connect(device)`` makes a connection (default:
    :func:`~nnflash.controller.transport.make_connection` with its default options).
    ``max_attempts``, ``max_disturbed``, ``args`` (recorded with the campaign) and ``visit`` are passed to
    :class:`~nnflash.controller.campaign.Campaign`. With ``handle_sigint`` (default), Ctrl-C stops
    the campaign cleanly (see the module docstring) instead of raising ``KeyboardInterrupt``.
    """
    obs = observer or CampaignObserver()
    try:
        store = ResultsDB(db_path)
        try:
            camp = Campaign(
                specs,
                devices,
                settings,
                store,
                artifacts_dir,
                connect=connect,
                max_attempts=max_attempts,
                on_plan=obs.planned,
                on_result=obs.measured,
                on_progress=obs.event,
                args=args,
                visit=visit,
                max_disturbed=max_disturbed,
            )
            with _sigint_stops(camp, obs) if handle_sigint else nullcontext():
                return camp.run()
        finally:
            store.close()
    finally:
        obs.closed()


def stored_rows(
    db_path: str | Path,
    devices: Sequence[str],
    runtime: str,
    threads: Optional[int],
    spec_ids: Optional[set[str]] = None,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """The ``ok`` measurements stored in ``db_path`` for ``devices`` (names) with ``runtime``,
    ``threads`` and ``precision``, every visit, device by device in the database's order; only
    ``spec_ids`` if given. Full rows: their ``summary`` holds the visit's ``latency_ms`` (see
    ``nnflash_agent.stats``). Disturbed measurements are not ``ok`` and never among them."""
    store = ResultsDB(db_path, readonly=True)
    try:
        return [
            r
            for device in devices
            for r in store.measurements(device=device, status="ok", precision=precision, full=True)
            if r.get("runtime") == runtime
            and r.get("threads") == threads
            and (spec_ids is None or r.get("spec_id") in spec_ids)
        ]
    finally:
        store.close()


@dataclass
class PassesResult:
    """What :func:`profile_in_passes` did: one campaign result per pass run (an interrupted pass
    is the last), and the stored ``ok`` rows of the specs (every visit; see :func:`stored_rows`)."""

    passes: int
    campaigns: list[CampaignResult] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def interrupted_pass(self) -> Optional[int]:
        """The pass (1-based) that was interrupted, or None if every pass ran to its end."""
        if self.campaigns and self.campaigns[-1].interrupted:
            return len(self.campaigns)
        return None


def profile_in_passes(
    specs: Sequence[AnySpec],
    devices: Sequence[Device],
    settings: MeasureSettings,
    db_path: str | Path,
    artifacts_dir: str | Path,
    *,
    passes: int,
    connect: ConnectFn = make_connection,
    max_attempts: int = 2,
    max_disturbed: int = 3,
    args: Optional[dict[str, Any]] = None,
    observer_for: Optional[Callable[[int], CampaignObserver]] = None,
    handle_sigint: bool = True,
) -> PassesResult:
    """Measure ``specs`` on ``devices`` in ``passes`` passes, one :func:`run_campaign` per pass:
    pass ``k`` (0-based) takes visit ``k`` of every model and records ``args`` plus ``visit`` and
    ``passes`` with its campaign; ``observer_for(k)`` observes it. Stops after a pass that was
    interrupted (no further pass); a device whose pass ended in an error (see
    ``CampaignResult.devices``) takes no part in later passes. Resumable: what the database already
    holds is skipped.
    The rows are read back only when every pass ran to its end."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    out = PassesResult(passes)
    left = list(devices)
    for visit in range(passes):
        result = run_campaign(
            specs,
            left,
            settings,
            db_path,
            artifacts_dir,
            connect=connect,
            max_attempts=max_attempts,
            max_disturbed=max_disturbed,
            args={**(args or {}), "visit": visit, "passes": passes},
            visit=visit,
            observer=observer_for(visit) if observer_for else None,
            handle_sigint=handle_sigint,
        )
        out.campaigns.append(result)
        if result.interrupted:
            return out
        # a device that failed (unreachable, no agent, ...) is not asked again in later passes
        failed = [d for d in left if d.name in result.devices and result.devices[d.name].error]
        left = [d for d in left if d not in failed]
        if failed and not left:
            break
    spec_ids = {s.spec_id for s in specs}
    out.rows = stored_rows(
        db_path, [d.name for d in devices], settings.runtime, settings.threads, spec_ids, settings.precision
    )
    return out
