"""Profiling campaigns: export (cached), ship, measure, store, on one or many devices.

Shape of a campaign
-------------------
- **One export thread** turns specs into artifacts (ONNX or TFLite, cached by content) in the
  order the devices need them, and records them in the database.
- **One worker per device** keeps a connection to that device's agent, uploads the next model
  while the device measures the current one (a one-deep upload pipeline), sends ``measure``, and
  commits each result to the database the moment it arrives.
- When a ``local`` device takes part, its measurements would share the CPU with the exporter, so
  the local worker starts measuring only after every export is done (measurements stay clean).

Resuming and faults
-------------------
- A (spec, device, runtime, threads) already measured ``ok`` is skipped; a failed one is retried
  until it has failed ``max_attempts`` times.
- A dropped connection is reopened with backoff; the result of the measurement in flight is
  fetched from the agent's journal by request id (the agent journals before it answers), else a
  ``connection_lost`` failure is stored with the reason and the measurement is sent again (while
  fewer than ``max_attempts`` were lost in this campaign). Nothing measured is lost, nothing is
  stored twice (request ids are unique in the database, and an ``ok`` row per key is unique too).
- An agent that does not answer within the per-model timeout is restarted and the measurement is
  stored as failed (``timeout``); the campaign goes on.
- A model that fails to export is stored as a failed measurement (``export_failed``).
- A ``disturbed`` measurement (the agent saw other processes compete for the measuring CPUs,
  stolen time, throttling or under-voltage; see ``nnflash_agent.disturbance``) is stored with its
  figures, never as ``ok``, and the model is measured again **later**: it goes to the back of the
  device's queue and waits ``disturbed_backoff_s`` (doubling with each attempt) so the disturbance
  can pass, up to ``max_disturbed`` disturbed attempts per model and visit. Disturbed attempts do
  not count as failures; a model still disturbed after them is reported (``still_disturbed``).
  The limit is per run: a rerun (a quieter moment, one hopes) measures such a model again, with
  ``max_disturbed`` fresh attempts (``retried_disturbed`` counts them), unlike failures, whose
  limit holds across runs.
- An agent that breaks the protocol (garbage, an over-long line, answers to requests never sent, a
  malformed measurement: :class:`~nnflash.controller.errors.ProtocolViolation`) fails its device at
  once with the reason (``DeviceReport.error``); nothing it sent is stored, the other devices go on.
- Ctrl-C (``stop()``) lets measurements in flight finish and stores them; a second Ctrl-C
  abandons them (they stay in the device's journal).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnflash.controller.errors import ConfigError, ProtocolViolation, RequestTimeout, TransportError
from nnflash.controller.inventory import Device
from nnflash.controller.store import ResultsDB
from nnflash.controller.transport.base import check_measure_response
from nnflash.models.spec import AnySpec
from nnflash_agent.measure import OPTION_DEFAULTS
from nnflash_agent.protocol import DISTURBED
from nnflash_agent.runners import RUNTIME_FORMATS
from nnflash_agent.stats import visit_latency_of

#: Numeric precisions a model can be deployed at (``int8``: TFLite's static int8 quantization).
PRECISIONS = ("fp32", "int8")


#: Sets the default of the disturbed gate's ``disturbed_share_max`` for every command of this
#: controller (a share in 0..1, or ``off``: record the figures, never gate); ``--disturbed-share``
#: still overrides it per command. Unset: the agent's default.
DISTURBED_SHARE_ENV = "NNFLASH_DISTURBED_SHARE"


def default_disturbed_share() -> Optional[float]:
    """The gate's default: :data:`DISTURBED_SHARE_ENV` when set, else the agent's ``OPTION_DEFAULTS``."""
    raw = os.environ.get(DISTURBED_SHARE_ENV, "").strip()
    if not raw:
        return OPTION_DEFAULTS["disturbed_share_max"]
    if raw.lower() == "off":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{DISTURBED_SHARE_ENV}: expected a share between 0 and 1 or 'off', got {raw!r}")
    return value


@dataclass(frozen=True)
class MeasureSettings:
    """What the agent is asked to do for every model (see ``agent/measure.py`` for the counting rule).

    The measurement defaults are the agent's own (``nnflash_agent.measure.OPTION_DEFAULTS``), so a
    field left at its default asks for what the agent would do anyway."""

    runtime: str = "onnxruntime"
    threads: Optional[int] = OPTION_DEFAULTS["threads"]
    #: ``fp32``, or ``int8`` (TFLite only: the model is exported with static int8 quantization)
    precision: str = "fp32"
    energy: str = OPTION_DEFAULTS["energy"]
    repeat: int = OPTION_DEFAULTS["repeat"]
    min_repeat_ms: float = OPTION_DEFAULTS["min_repeat_ms"]
    warmup_runs: int = OPTION_DEFAULTS["warmup_runs"]
    warmup_s: float = OPTION_DEFAULTS["warmup_s"]
    timeout_s: float = OPTION_DEFAULTS["timeout_s"]
    isolate: bool = OPTION_DEFAULTS["isolate"]
    #: CPU ids the measuring worker is pinned to (``sched_setaffinity``); None: the scheduler's choice
    affinity: Optional[tuple[int, ...]] = OPTION_DEFAULTS["affinity"]
    #: the disturbed gate (see ``agent/measure.py``, step 6): a repeat is disturbed when its threads
    #: waited for a CPU more than this share of its time ...
    wait_share_max: float = OPTION_DEFAULTS["wait_share_max"]
    #: ... and a measurement when more than this share of its repeats were (None: never)
    disturbed_share_max: Optional[float] = field(default_factory=default_disturbed_share)
    #: how much longer than ``timeout_s`` the controller waits for an answer before it declares the
    #: agent hung and restarts it (the agent enforces ``timeout_s`` itself on an isolated worker)
    answer_margin_s: float = 60.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.precision != "fp32" and RUNTIME_FORMATS.get(self.runtime) != "tflite":
            raise ValueError(f"precision {self.precision} needs the tflite runtime, not {self.runtime}")

    @property
    def fmt(self) -> str:
        return RUNTIME_FORMATS[self.runtime]

    @property
    def quantize(self) -> Optional[str]:
        """The export's quantization (``models.export``'s ``quantize``) for this precision."""
        return None if self.precision == "fp32" else self.precision

    def agent_args(self, sha256: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "artifact": {"sha256": sha256, "format": self.fmt},
            "runtime": self.runtime,
            "repeat": self.repeat,
            "min_repeat_ms": self.min_repeat_ms,
            "warmup_runs": self.warmup_runs,
            "warmup_s": self.warmup_s,
            "energy": self.energy,
            "timeout_s": self.timeout_s,
            "isolate": self.isolate,
            "wait_share_max": self.wait_share_max,
            "disturbed_share_max": self.disturbed_share_max,
        }
        if self.threads is not None:
            args["threads"] = self.threads
        if self.affinity is not None:
            args["affinity"] = list(self.affinity)
        return args


@dataclass
class DeviceReport:
    device: str
    planned: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    gave_up: int = 0
    #: disturbed measurements stored (each was measured again, up to the limit)
    disturbed: int = 0
    #: models left disturbed: their last allowed attempt in this run was disturbed too
    still_disturbed: int = 0
    #: planned models whose earlier runs left them disturbed (measured again in this run)
    retried_disturbed: int = 0
    reconnects: int = 0
    busy_s: float = 0.0
    wall_s: float = 0.0
    error: Optional[str] = None


@dataclass
class CampaignResult:
    campaign_id: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[str, DeviceReport] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0


def measurement_row(stored: dict[str, Any]) -> dict[str, Any]:
    """The public JSON line of one measurement (``nnflash profile --json``)."""
    keys = (
        "spec_id",
        "device",
        "runtime",
        "threads",
        "precision",
        "status",
        "latency_ms",
        "latency_ms_median",
        "latency_ms_mean",
        "latency_ms_p90",
        "energy_mj",
        "error",
        "request_id",
    )
    return {k: stored.get(k) for k in keys}


class _Artifacts:
    """Artifacts by spec id, filled by the export thread, awaited by the device workers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[str, tuple[Optional[Any], Optional[str]]] = {}
        self.finished = False

    def put(self, spec_id: str, artifact: Optional[Any], error: Optional[str]) -> None:
        with self._cond:
            self._items[spec_id] = (artifact, error)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def wait(self, spec_id: str, stop: threading.Event) -> tuple[Optional[Any], Optional[str]]:
        with self._cond:
            while spec_id not in self._items:
                if self.finished:
                    return None, "export did not run"
                if stop.is_set():
                    return None, "stopped"
                self._cond.wait(0.2)
            return self._items[spec_id]

    def wait_all(self, stop: threading.Event) -> None:
        with self._cond:
            while not self.finished and not stop.is_set():
                self._cond.wait(0.2)


ConnectFn = Callable[[Device], Any]


class Campaign:
    """One profiling campaign. ``run()`` blocks; ``stop()`` may be called from another thread."""

    def __init__(
        self,
        specs: Sequence[AnySpec],
        devices: Sequence[Device],
        settings: MeasureSettings,
        store: ResultsDB,
        artifacts_dir: str | Path,
        *,
        connect: ConnectFn,
        max_attempts: int = 2,
        on_result: Optional[Callable[[dict[str, Any]], None]] = None,
        on_progress: Optional[Callable[[str, str], None]] = None,
        on_plan: Optional[Callable[[dict[str, list[str]]], None]] = None,
        args: Optional[dict[str, Any]] = None,
        reconnect_attempts: int = 6,
        export_fn: Optional[Callable[..., Any]] = None,
        visit: int = 0,
        max_disturbed: int = 3,
        disturbed_backoff_s: float = 2.0,
    ) -> None:
        if not specs:
            raise ValueError("a campaign needs at least one spec")
        if not devices:
            raise ValueError("a campaign needs at least one device")
        if settings.runtime not in RUNTIME_FORMATS:
            raise ValueError(f"unknown runtime {settings.runtime!r}")
        if visit < 0:
            raise ValueError(f"visit must be >= 0, got {visit}")
        if max_disturbed < 1:
            raise ValueError(f"max_disturbed must be >= 1, got {max_disturbed}")
        if not disturbed_backoff_s >= 0:
            raise ValueError(f"disturbed_backoff_s must be >= 0, got {disturbed_backoff_s}")
        self.specs = {s.spec_id: s for s in specs}
        self.order = list(self.specs)
        self.devices = list(devices)
        self.settings = settings
        self.store = store
        self.artifacts_dir = Path(artifacts_dir)
        self.connect = connect
        self.max_attempts = max_attempts
        #: disturbed attempts per model and visit before it is left disturbed
        self.max_disturbed = int(max_disturbed)
        #: wait before the first re-measurement of a disturbed model (doubles with each attempt)
        self.disturbed_backoff_s = float(disturbed_backoff_s)
        self._disturbed: dict[tuple[str, str], int] = {}
        #: which repeated measurement of every model this campaign takes (0: the ordinary one;
        #: calibration measures in several passes, one campaign per visit)
        self.visit = int(visit)
        self.on_result = on_result or (lambda row: None)
        self.on_progress = on_progress or (lambda device, event: None)
        #: called once by ``run()`` with its plan (spec ids per device, see ``plan()``) before any
        #: measurement starts, e.g. to size progress bars
        self.on_plan = on_plan or (lambda todo: None)
        self.reconnect_attempts = reconnect_attempts
        self.export_fn = export_fn
        self.stop_requested = False
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._artifacts = _Artifacts()
        self._conns: dict[str, Any] = {}
        self.result = CampaignResult(campaign_id=0)
        self.campaign_args = dict(args or {})

    # ------------------------------------------------------------------ planning

    def plan(self) -> dict[str, list[str]]:
        """Spec ids each device still has to measure (resume: skip done, skip given up)."""
        s = self.settings
        todo: dict[str, list[str]] = {}
        for dev in self.devices:
            done = self.store.done_spec_ids(dev.name, s.runtime, s.threads, visit=self.visit, precision=s.precision)
            fails = self.store.failure_counts(dev.name, s.runtime, s.threads, precision=s.precision)
            disturbed = self.store.disturbed_counts(
                dev.name, s.runtime, s.threads, visit=self.visit, precision=s.precision
            )
            rep = DeviceReport(dev.name)
            lst = []
            for sid in self.order:
                if sid in done:
                    rep.skipped += 1
                elif fails.get(sid, 0) >= self.max_attempts:
                    rep.gave_up += 1
                else:
                    # disturbed attempts are counted per run: a disturbance passes, so a rerun (a
                    # quieter moment) gets max_disturbed fresh attempts; earlier ones are kept as rows
                    lst.append(sid)
                    self._disturbed[(dev.name, sid)] = 0
                    if disturbed.get(sid, 0):
                        rep.retried_disturbed += 1
            rep.planned = len(lst)
            self.result.devices[dev.name] = rep
            todo[dev.name] = lst
        return todo

    # ------------------------------------------------------------------ running

    def stop(self) -> None:
        """First call: finish measurements in flight, start no new ones. Second call: abandon them."""
        self.stop_requested = True
        if self._stop.is_set():
            self._abort.set()
            with self._lock:
                conns = list(self._conns.values())
            for c in conns:
                try:
                    c.close()
                except Exception:
                    pass
        self._stop.set()

    def run(self) -> CampaignResult:
        t0 = time.perf_counter()
        for spec in self.specs.values():
            self.store.add_spec(spec.spec_id, spec.family, spec.canonical_json())
        cid = self.store.create_campaign(
            {
                **self.campaign_args,
                "specs": len(self.specs),
                "devices": [d.name for d in self.devices],
                "runtime": self.settings.runtime,
                "threads": self.settings.threads,
                "precision": self.settings.precision,
            }
        )
        self.result.campaign_id = cid
        todo = self.plan()
        self.on_plan(todo)
        needed = [sid for sid in self.order if any(sid in lst for lst in todo.values())]
        exporter = threading.Thread(target=self._export_loop, args=(needed,), name="export", daemon=True)
        exporter.start()
        workers = [
            threading.Thread(target=self._device_loop, args=(dev, todo[dev.name]), name=f"dev-{dev.name}", daemon=True)
            for dev in self.devices
            if todo[dev.name]
        ]
        for w in workers:
            w.start()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        except KeyboardInterrupt:
            self.stop()
            self.result.interrupted = True
            try:
                for w in workers:
                    while w.is_alive():
                        w.join(0.2)
            except KeyboardInterrupt:
                self.stop()
                for w in workers:
                    w.join(5)
        self._stop.set()
        exporter.join(30)
        interrupted = self.result.interrupted or self.stop_requested
        self.result.interrupted = interrupted
        self.store.set_campaign_status(cid, "interrupted" if interrupted else "done")
        self.result.wall_s = time.perf_counter() - t0
        return self.result

    # ------------------------------------------------------------------ export

    def _export_loop(self, needed: list[str]) -> None:
        from nnflash.models.export import export_spec

        export = self.export_fn or export_spec
        try:
            for sid in needed:
                if self._stop.is_set():
                    break
                spec = self.specs[sid]
                try:
                    q = self.settings.quantize
                    art = (
                        export(spec, self.settings.fmt, self.artifacts_dir, quantize=q)
                        if q
                        else export(spec, self.settings.fmt, self.artifacts_dir)
                    )
                    self.store.add_artifact(
                        sha256=art.sha256,
                        spec_id=sid,
                        fmt=art.format,
                        path=str(art.path),
                        size=art.size,
                        exporter=art.exporter,
                        versions=dict(art.versions),
                    )
                    self._artifacts.put(sid, art, None)
                except Exception as e:  # an export failure is a result for this spec, not the end
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    self._artifacts.put(sid, None, f"{type(e).__name__}: {msg}")
        finally:
            self._artifacts.finish()

    # ------------------------------------------------------------------ device worker

    def _store(self, dev: Device, sid: str, request_id: str, response: dict[str, Any]) -> Optional[float]:
        """Store one response; for a ``disturbed`` one that may be measured again, return after how
        many seconds (None otherwise)."""
        s = self.settings
        status = str(response.get("status") or "internal")
        res = response.get("result") or {}
        energy = res.get("energy") if isinstance(res, dict) else None
        energy_mj = None
        if isinstance(energy, dict):
            energy_mj = energy.get("energy_mj_per_inference", energy.get("energy_mj"))
        summary = None
        state = None
        if isinstance(res, dict) and res:
            summary = {k: v for k, v in res.items() if k not in ("samples_ms", "state_before", "state_after", "energy")}
            state = {"before": res.get("state_before"), "after": res.get("state_after"), "flags": res.get("flags")}
        stored = self.store.add_measurement(
            spec_id=sid,
            device=dev.name,
            runtime=s.runtime,
            threads=s.threads,
            request_id=request_id,
            status=status,
            error=response.get("error"),
            campaign_id=self.result.campaign_id,
            latency_ms_median=res.get("latency_ms_median") if isinstance(res, dict) else None,
            latency_ms_mean=res.get("latency_ms_mean") if isinstance(res, dict) else None,
            latency_ms_p90=res.get("latency_ms_p90") if isinstance(res, dict) else None,
            energy_mj=energy_mj,
            samples=res.get("samples_ms") if isinstance(res, dict) else None,
            summary=summary,
            state=state,
            energy=energy,
            visit=self.visit,
            precision=s.precision,
        )
        rep = self.result.devices[dev.name]
        retry_in: Optional[float] = None
        with self._lock:
            if status == "ok":
                rep.ok += 1
            elif status == DISTURBED:
                rep.disturbed += 1
                if stored:
                    n = self._disturbed.get((dev.name, sid), 0) + 1
                    self._disturbed[(dev.name, sid)] = n
                    if n < self.max_disturbed:
                        retry_in = self.disturbed_backoff_s * 2 ** (n - 1)
                    else:
                        rep.still_disturbed += 1
            else:
                rep.failed += 1
        row = {
            "spec_id": sid,
            "device": dev.name,
            "runtime": s.runtime,
            "threads": s.threads,
            "precision": s.precision,
            "status": status,
            "latency_ms": visit_latency_of(res) if isinstance(res, dict) and res else None,
            "latency_ms_median": res.get("latency_ms_median") if isinstance(res, dict) else None,
            "latency_ms_mean": res.get("latency_ms_mean") if isinstance(res, dict) else None,
            "latency_ms_p90": res.get("latency_ms_p90") if isinstance(res, dict) else None,
            "energy_mj": energy_mj,
            "error": response.get("error"),
            "request_id": request_id,
            "visit": self.visit,
            "stored": stored,
        }
        if retry_in is not None:
            row["retry_in_s"] = retry_in
        with self._lock:
            self.result.rows.append(row)
        self.on_result(row)
        self.on_progress(dev.name, "done" if retry_in is None else "disturbed")
        return retry_in

    def _open(self, dev: Device, conn: Any) -> Any:
        """(Re)open the device connection with bounded exponential backoff."""
        delay = 0.5
        last: Optional[BaseException] = None
        for attempt in range(self.reconnect_attempts):
            if self._abort.is_set():
                break
            try:
                if conn is None:
                    conn = self.connect(dev)
                conn.open()
                with self._lock:
                    self._conns[dev.name] = conn
                if attempt or self.result.devices[dev.name].reconnects:
                    self.on_progress(dev.name, "reconnected")
                return conn
            except TransportError as e:
                last = e
                if isinstance(e, ProtocolViolation):
                    raise  # a new session with the same agent breaks the protocol again
                if "host key" in str(e).lower() or "authentication" in str(e).lower():
                    break  # retrying does not fix trust or credentials
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise TransportError(f"device {dev.name}: cannot connect: {last}")

    def _device_loop(self, dev: Device, todo: list[str]) -> None:
        rep = self.result.devices[dev.name]
        t0 = time.perf_counter()
        conn: Any = None
        uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"up-{dev.name}")
        try:
            conn = self._open(dev, None)
            if conn.facts:
                self.store.add_device_facts(dev.name, conn.facts)
            if dev.is_local:
                self._artifacts.wait_all(self._stop)
            pending: dict[str, Future] = {}

            def upload(sid: str) -> Optional[Future]:
                """Upload ``sid`` in the background as soon as its export is done (never blocks)."""
                c = conn

                def job() -> Any:
                    art, _err = self._artifacts.wait(sid, self._stop)
                    return None if art is None else c.put_artifact(art.path, art.sha256, art.format)

                return uploader.submit(job)

            queue = list(todo)
            later: list[tuple[float, str]] = []  # (due time, spec id) of disturbed ones
            while queue or later:
                if self._stop.is_set():
                    break
                sid = self._next(queue, later)
                if sid is None:
                    continue
                art, err = self._artifacts.wait(sid, self._stop)
                if self._stop.is_set() and art is None and err == "stopped":
                    break
                if art is None:
                    self._store(
                        dev,
                        sid,
                        f"export-{uuid.uuid4().hex[:12]}",
                        {"status": "export_failed", "error": err or "export failed"},
                    )
                    continue
                conn, retry_in = self._measure_one(
                    dev, conn, sid, art, pending.pop(sid, None), upload, queue[:1], pending
                )
                if retry_in is not None:
                    later.append((time.monotonic() + retry_in, sid))
        except TransportError as e:
            rep.error = str(e)
            self.on_progress(dev.name, "error")
        finally:
            uploader.shutdown(wait=False, cancel_futures=True)
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            rep.wall_s = time.perf_counter() - t0

    def _next(self, queue: list[str], later: list[tuple[float, str]]) -> Optional[str]:
        """The next model to measure: a disturbed one whose back-off is over, else the next in
        the queue, else (only disturbed ones left) wait for the first of them (a short nap at a
        time, so that a stop is seen); None after a nap."""
        later.sort()
        now = time.monotonic()
        if later and (later[0][0] <= now or not queue):
            due, sid = later[0]
            if due > now:
                self._stop.wait(min(due - now, 0.2))
                return None
            later.pop(0)
            return sid
        return queue.pop(0)

    def _measure_one(
        self,
        dev: Device,
        conn: Any,
        sid: str,
        art: Any,
        fut: Optional[Future],
        upload: Callable[[str], Optional[Future]],
        nxt: list[str],
        pending: dict[str, Future],
    ) -> tuple[Any, Optional[float]]:
        """Measure one model (upload, request, store); returns the connection to go on with and,
        for a disturbed result to be measured again, after how many seconds."""
        rep = self.result.devices[dev.name]
        s = self.settings
        attempts = 0
        verify = False
        while True:
            attempts += 1
            try:
                if fut is not None:
                    fut.result()
                    fut = None
                else:
                    conn.put_artifact(art.path, art.sha256, art.format, verify_existing=verify)
                for n in nxt:  # upload the next model while this one is measured
                    if n not in pending:
                        f2 = upload(n)
                        if f2 is not None:
                            pending[n] = f2
                rid = f"c{self.result.campaign_id}-{sid}-{uuid.uuid4().hex[:10]}"
                t_m = time.perf_counter()
                try:
                    response = conn.request(
                        "measure", s.agent_args(art.sha256), timeout_s=s.timeout_s + s.answer_margin_s, request_id=rid
                    )
                finally:
                    rep.busy_s += time.perf_counter() - t_m
                check_measure_response(response, rid, dev.name)  # nothing malformed is stored
                if response.get("status") == "corrupt_artifact" and not verify and attempts < 3:
                    verify = True  # re-upload over the corrupt copy, then measure again
                    continue
                return conn, self._store(dev, sid, rid, response)
            except ProtocolViolation:
                raise  # the device is failed (its worker stops); the database keeps what was good
            except RequestTimeout as e:
                rid = getattr(e, "request_id", None) or f"timeout-{uuid.uuid4().hex[:12]}"
                self._store(
                    dev,
                    sid,
                    rid,
                    {"status": "timeout", "error": f"no answer within {s.timeout_s + 60:g} s; agent restarted"},
                )
                pending.clear()
                rep.reconnects += 1
                return self._open(dev, conn), None
            except TransportError as e:
                if self._abort.is_set():
                    raise
                pending.clear()
                rep.reconnects += 1
                self.on_progress(dev.name, "reconnecting")
                conn = self._open(dev, conn)
                lost_id: Optional[str] = getattr(e, "request_id", None)
                if lost_id and lost_id.startswith(f"c{self.result.campaign_id}-"):
                    got = conn.results([lost_id]).get(lost_id)
                    if got:
                        check_measure_response(got, lost_id, dev.name)
                        return conn, self._store(dev, sid, lost_id, got)
                    # the agent died before it journaled the answer (killed, power cut): a failure
                    # with its reason, and the model is measured again while attempts remain
                    self._store(
                        dev,
                        sid,
                        f"lost-{uuid.uuid4().hex[:12]}",
                        {"status": "connection_lost", "error": f"{e}; no result in the device's journal"},
                    )
                    if attempts >= self.max_attempts:
                        return conn, None
                    continue
                if attempts >= self.max_attempts + 1:
                    self._store(
                        dev, sid, f"lost-{uuid.uuid4().hex[:12]}", {"status": "connection_lost", "error": str(e)}
                    )
                    return conn, None
            except Exception as e:  # export file vanished, etc.: a failed result, not a dead campaign
                self._store(
                    dev,
                    sid,
                    f"err-{uuid.uuid4().hex[:12]}",
                    {"status": "internal", "error": f"{type(e).__name__}: {e}"},
                )
                return conn, None
