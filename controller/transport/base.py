"""A session with one device's agent: JSON lines, requests matched to responses, and
content-addressed artifact upload. The byte stream and the file operations are the backends' job
(:mod:`.local`, :mod:`.ssh`).

Requests carry generated (or caller-chosen) ids and responses are matched by id, so several threads
may share one connection. A request that gets no answer within ``timeout_s`` raises
:class:`RequestTimeout`; a connection that drops (agent exited, sshd gone, network error) fails
every pending request with :class:`TransportError` whose ``request_id`` names the request: the
agent journals every result before answering, so after reconnecting (:meth:`Connection.open` again,
or a new connection) the caller fetches it with :meth:`Connection.results`.

Artifact upload (:meth:`Connection.put_artifact`) is content addressed: the file goes to
``<store_dir>/<sha256>.<format>``, where ``store_dir`` is what the agent's ``hello`` reported. A
file already there with the right size is skipped (pass ``verify_existing=True`` to also check its
hash, e.g. after the agent answered ``corrupt_artifact``). Otherwise the file is written under
``<store_dir>/.incoming/`` and its sha256 is computed *on the device* (``sha256sum``, or
``python3``'s hashlib where coreutils is missing) before it is renamed into place, so a corrupt
upload never appears under its final name; a mismatch is retried once, then raised. The agent
checks the hash again before it measures (status ``corrupt_artifact``).

A broken or hostile agent cannot make the controller crash, store garbage or wait forever: a line
that starts like a JSON object but is not a well-formed response (a truncated line, say), a line
longer than ``max_line_bytes`` (a configurable cap), an answer without an id or to a request this
session never sent, or more than :data:`MAX_NOISE_LINES` other lines that are not JSON (a login
script may print a few) ends the session with :class:`ProtocolViolation` for every request
waiting, naming what the agent sent.
:func:`check_measure_response` is what a ``measure`` answer must look like before it is stored.
"""

from __future__ import annotations

import abc
import collections
import itertools
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

from nnflash.controller.errors import ExportError, ProtocolViolation, RequestTimeout, TransportError
from nnflash.controller.inventory import Device
from nnflash_agent.fileio import sha256_file

__all__ = [
    "ArtifactPut",
    "Connection",
    "DEFAULT_MAX_LINE_BYTES",
    "INCOMING_DIR",
    "SHA256_RE",
    "check_measure_response",
    "check_response",
]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")
INCOMING_DIR = ".incoming"
#: The longest line the controller reads from an agent (a measure answer with 100,000 repeats is
#: about 3 MB); a longer one is a protocol violation, not a reason to grow memory without end.
DEFAULT_MAX_LINE_BYTES = 64 << 20
#: Lines that are not JSON and do not start with ``{`` tolerated in one session (logged with the
#: agent's stderr: a login script printing on a shell's stdout, say); one more is a violation.
MAX_NOISE_LINES = 100


def _protocol() -> Any:
    """The wire protocol module, imported at call time (``agent/protocol.py``, stdlib only)."""
    from nnflash_agent import protocol

    return protocol


@dataclass(frozen=True)
class ArtifactPut:
    """What :meth:`Connection.put_artifact` did."""

    remote_path: str
    uploaded: bool  # False: already present (skipped)
    size: int
    seconds: float


class _Pending:
    __slots__ = ("event", "response", "verb")

    def __init__(self, verb: str) -> None:
        self.event = threading.Event()
        self.response: Optional[Dict[str, Any]] = None
        self.verb = verb


class Connection(abc.ABC):
    """A session with one device's agent. Use as a context manager, or ``open()`` / ``close()``.

    After a drop, ``open()`` may be called again to reconnect (a fresh agent process is started; the
    device's journal survives).
    """

    def __init__(
        self, device: Device, *, hello_timeout_s: float = 60.0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        if max_line_bytes < 1024:
            raise ValueError(f"max_line_bytes must be at least 1024, got {max_line_bytes}")
        self.device = device
        self.hello_timeout_s = hello_timeout_s
        self.max_line_bytes = int(max_line_bytes)
        #: why the agent is not trusted any more (a protocol violation), else None
        self.violation: Optional[str] = None
        self._sent: set[str] = set()
        self.hello: Optional[Dict[str, Any]] = None
        self._pending: Dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dead: Optional[str] = "not open"
        self._stderr_tail: Deque[str] = collections.deque(maxlen=40)
        self._id_prefix = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        self._threads: List[threading.Thread] = []

    # ---- public API

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def alive(self) -> bool:
        return self._dead is None

    @property
    def store_dir(self) -> str:
        if not self.hello or not self.hello.get("store_dir"):
            raise TransportError(f"device {self.name}: not connected (no hello yet)")
        return str(self.hello["store_dir"])

    @property
    def facts(self) -> Dict[str, Any]:
        return dict((self.hello or {}).get("facts") or {})

    @property
    def stderr_tail(self) -> List[str]:
        """The agent's last stderr lines (human logs), for error messages."""
        return list(self._stderr_tail)

    def open(self) -> Dict[str, Any]:
        """Start the agent and say ``hello``; returns the hello result (``store_dir``,
        ``facts``...). Reconnects if called again after a drop."""
        self._shutdown(graceful=False)  # release a dropped (or open) session first
        self._stderr_tail.clear()
        self._sent = set()
        self.violation = None
        self._start()
        self._dead = None
        try:
            try:
                response = self.request("hello", {}, timeout_s=self.hello_timeout_s)
            except RequestTimeout:
                raise self._error(
                    f"the agent did not answer hello within {self.hello_timeout_s:g} s "
                    f"(agent command: {self.device.agent_command!r})"
                ) from None
            self.hello = self._check_hello(response)
        except BaseException:
            self._shutdown(graceful=False)
            raise
        return self.hello

    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._counter)}"

    def request(
        self,
        verb: str,
        args: Optional[Dict[str, Any]] = None,
        timeout_s: float = 60.0,
        *,
        request_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Send one request and wait for its response (a dict with ``status``, ``error``,
        ``result``).

        A response with a non-ok status is returned, not raised (a failed measurement is a result).
        Raises :class:`RequestTimeout` after ``timeout_s`` without an answer and
        :class:`TransportError` when the connection is or goes down.
        """
        proto = _protocol()
        rid = request_id or self.new_request_id()
        pending = _Pending(verb)
        with self._lock:
            if self._dead is not None:
                if self.violation is not None:
                    raise self._error(self.violation, rid, violation=True)
                raise self._error(f"not connected ({self._dead})", rid)
            if rid in self._pending:
                raise TransportError(f"device {self.name}: request id {rid!r} already in flight")
            self._pending[rid] = pending
            self._sent.add(rid)
        try:
            line = proto.encode(proto.make_request(verb, rid, args or {}))
            try:
                with self._write_lock:
                    self._write(line)
            except (OSError, EOFError, TransportError) as exc:
                self._mark_dead(f"write failed: {exc}")
                raise self._error(f"connection lost while sending {verb} ({exc})", rid) from None
            except Exception as exc:  # paramiko.SSHException and friends
                self._mark_dead(f"write failed: {exc}")
                raise self._error(f"connection lost while sending {verb} ({exc})", rid) from None
            if not pending.event.wait(timeout_s):
                exc_t = RequestTimeout(
                    f"device {self.name}: no answer to {verb} (request {rid}) within {timeout_s:g} s"
                )
                exc_t.request_id = rid
                raise exc_t
        finally:
            with self._lock:
                self._pending.pop(rid, None)
        if pending.response is None:
            if self.violation is not None:
                raise self._error(self.violation, rid, violation=True)
            raise self._error(f"connection lost while waiting for {verb} ({self._dead})", rid)
        return pending.response

    def ping(self, timeout_s: float = 5.0) -> float:
        """A cheap round trip through the agent (``results`` for no ids); returns it in ms. Raises
        like :meth:`request` when the device does not answer in time."""
        t0 = time.perf_counter()
        self.request("results", {"ids": []}, timeout_s=timeout_s)
        return (time.perf_counter() - t0) * 1e3

    def results(self, ids: Sequence[str], timeout_s: float = 60.0) -> Dict[str, Any]:
        """Fetch journaled responses by request id: ``{id: response-or-None}``."""
        response = self.request("results", {"ids": list(ids)}, timeout_s=timeout_s)
        if response.get("status") != "ok":
            raise TransportError(
                f"device {self.name}: results query failed: {response.get('status')}: {response.get('error')}"
            )
        found = (response.get("result") or {}).get("results") if isinstance(response.get("result"), dict) else None
        if not isinstance(found, dict) or not all(v is None or isinstance(v, dict) for v in found.values()):
            self._violate("a results answer that is not an object of responses by id")
            raise self._error(self.violation or "", violation=True)
        return dict(found)

    def put_artifact(
        self,
        path: os.PathLike[str] | str,
        sha256: str,
        fmt: str,
        *,
        verify_existing: bool = False,
        check_local: bool = True,
    ) -> ArtifactPut:
        """Put a local file into the agent's store as ``<store_dir>/<sha256>.<fmt>`` (see the module
        docstring). Returns what was done; raises TransportError when the upload stays corrupt."""
        t0 = time.perf_counter()
        local = Path(path)
        if not SHA256_RE.match(sha256 or ""):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, not {sha256!r}")
        if not _FORMAT_RE.match(fmt or ""):
            raise ValueError(f"bad artifact format {fmt!r}")
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise ExportError(f"artifact {local}: {exc.strerror or exc}") from None
        if check_local:
            actual = sha256_file(local)
            if actual != sha256:
                raise ExportError(f"artifact {local} has sha256 {actual}, not {sha256} as recorded; re-export it")
        store = self.store_dir.rstrip("/")
        final = f"{store}/{sha256}.{fmt}"
        existing = self._remote_size(final)
        if existing == size and (not verify_existing or self._remote_sha256(final) == sha256):
            return ArtifactPut(final, False, size, time.perf_counter() - t0)
        incoming = f"{store}/{INCOMING_DIR}"
        self._remote_mkdirs(incoming)
        got = ""
        for _attempt in range(2):
            tmp = f"{incoming}/{sha256}.{fmt}.{uuid.uuid4().hex[:12]}.part"
            try:
                self._upload(local, tmp)
                got = self._remote_sha256(tmp)
                if got == sha256:
                    self._remote_rename(tmp, final)
                    return ArtifactPut(final, True, size, time.perf_counter() - t0)
            finally:
                self._remote_remove_quiet(tmp)
        raise TransportError(
            f"device {self.name}: upload of {local.name} is corrupt: the device computed sha256 "
            f"{got or '(none)'}, expected {sha256} (tried twice)"
        )

    def close(self) -> None:
        """Say ``bye`` (best effort) and release everything. Safe to call twice."""
        self._shutdown(graceful=True)

    def __enter__(self) -> Connection:
        if self._dead is not None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.alive else f"closed ({self._dead})"
        return f"<{type(self).__name__} {self.name} {state}>"

    # ---- hooks for implementations

    @abc.abstractmethod
    def _start(self) -> None:
        """Establish the byte stream to a freshly started agent and start the reader threads."""

    @abc.abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def _close_stream(self, graceful: bool) -> None:
        """Release the stream, the agent process and anything else opened by ``_start``."""

    @abc.abstractmethod
    def _remote_size(self, path: str) -> Optional[int]: ...

    @abc.abstractmethod
    def _remote_sha256(self, path: str) -> str: ...

    @abc.abstractmethod
    def _remote_mkdirs(self, path: str) -> None: ...

    @abc.abstractmethod
    def _upload(self, local: Path, remote: str) -> None: ...

    @abc.abstractmethod
    def _remote_rename(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    def _remote_remove_quiet(self, path: str) -> None: ...

    # ---- shared plumbing

    def _describe(self) -> str:
        return self.name

    def _error(self, message: str, request_id: Optional[str] = None, *, violation: bool = False) -> TransportError:
        tail = "; ".join(list(self._stderr_tail)[-3:])
        text = f"device {self._describe()}: {'agent broke the protocol: ' if violation else ''}{message}"
        if tail:
            text += f" [agent stderr: {tail}]"
        exc = ProtocolViolation(text) if violation else TransportError(text)
        exc.request_id = request_id
        return exc

    def _check_hello(self, response: Dict[str, Any]) -> Dict[str, Any]:
        proto = _protocol()
        if response.get("status") != "ok":
            raise self._error(
                f"agent refused hello: {response.get('status')}: {response.get('error')} "
                f"(controller speaks protocol v{proto.PROTOCOL_VERSION})"
            )
        result = response.get("result") or {}
        if not isinstance(result, dict):
            raise self._error("agent's hello result is not an object", violation=True)
        theirs = result.get("protocol")
        if theirs != proto.PROTOCOL_VERSION:
            raise self._error(
                f"protocol version mismatch: the agent speaks v{theirs}, this controller "
                f"v{proto.PROTOCOL_VERSION}; install the matching nnflash-agent on the device"
            )
        if not result.get("store_dir"):
            raise self._error("agent's hello did not report a store_dir")
        store_dir = result["store_dir"]
        if not isinstance(store_dir, str) or not store_dir.startswith("/") or not store_dir.isprintable():
            raise self._error(f"agent's hello reported a bad store_dir {_clip(store_dir)}", violation=True)
        if not isinstance(result.get("facts", {}), dict):
            raise self._error("agent's hello reported facts that are not an object", violation=True)
        return dict(result)

    def _start_reader(self, read: Callable[[], bytes], label: str) -> None:
        t = threading.Thread(target=self._reader_loop, args=(read,), name=f"nnflash-{self.name}-{label}", daemon=True)
        t.start()
        self._threads.append(t)

    def _start_stderr_reader(self, read: Callable[[], bytes]) -> None:
        def loop() -> None:
            buf = b""
            while True:
                try:
                    chunk = read()
                except Exception:
                    return
                if not chunk:
                    if buf.strip():
                        self._stderr_tail.append(buf.decode("utf-8", "replace").strip()[:500])
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > 4096:  # a line without end: keep its start, drop the rest
                    lines.append(buf[:500])
                    buf = b""
                for raw in lines:
                    text = raw.decode("utf-8", "replace").strip()
                    if text:
                        self._stderr_tail.append(text[:500])

        t = threading.Thread(target=loop, name=f"nnflash-{self.name}-stderr", daemon=True)
        t.start()
        self._threads.append(t)

    def _reader_loop(self, read: Callable[[], bytes]) -> None:
        proto = _protocol()
        buf = bytearray()
        scanned = 0  # bytes of buf already searched for a newline
        reason = "agent closed its output"
        noise = 0  # lines that are not JSON (and do not start like an object) tolerated so far
        while True:
            try:
                chunk = read()
            except Exception as exc:  # socket/paramiko errors
                reason = f"read failed: {exc}"
                break
            if not chunk:
                reason = self._eof_reason()
                if buf.strip():
                    reason += f" in the middle of a line ({len(buf)} bytes without a newline)"
                break
            buf += chunk
            violation = None
            while violation is None:
                nl = buf.find(b"\n", scanned)
                if nl < 0:
                    scanned = len(buf)
                    if len(buf) > self.max_line_bytes:
                        violation = f"a line longer than {self.max_line_bytes} bytes (max_line_bytes)"
                    break
                if nl > self.max_line_bytes:
                    violation = f"a line longer than {self.max_line_bytes} bytes (max_line_bytes)"
                    break
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                scanned = 0
                if not line.strip():
                    continue
                try:
                    msg = proto.decode(line)
                except proto.ProtocolError as exc:
                    if not line.lstrip().startswith(b"{") and noise < MAX_NOISE_LINES:
                        noise += 1  # a shell's login noise, say; a broken object is not noise
                        self._stderr_tail.append("stdout: " + line.decode("utf-8", "replace")[:300])
                        continue
                    violation = f"{exc.message}: {_clip(line)}"
                    break
                try:
                    check_response(msg)
                except proto.ProtocolError as exc:
                    violation = f"{exc.message}: {_clip(line)}"
                    break
                violation = self._deliver(msg)
            if violation is not None:
                self._violate(violation)
                return
        self._mark_dead(reason)

    def _deliver(self, msg: Dict[str, Any]) -> Optional[str]:
        """Hand a response to the request waiting for it; returns a violation, else None."""
        rid = msg["id"]
        if rid is None:  # the agent could not read a request of ours
            return f"an answer without a request id ({msg['status']}: {_clip(msg.get('error'))})"
        with self._lock:
            pending = self._pending.get(rid)
            sent = rid in self._sent
        if pending is None:
            if not sent:
                return f"an answer to request {_clip(rid)}, which this session never sent"
            return None  # a late answer to a request that timed out (or a repeat): ignored
        pending.response = msg
        pending.event.set()
        return None

    def _violate(self, reason: str) -> None:
        """The agent broke the protocol: stop trusting it, fail every waiting request."""
        with self._lock:
            if self.violation is None:
                self.violation = reason
        self._mark_dead(f"protocol violation: {reason}")

    def _eof_reason(self) -> str:
        return "agent closed its output"

    def _mark_dead(self, reason: str) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = reason
            pending = list(self._pending.values())
        for p in pending:
            p.event.set()  # response stays None -> TransportError in request()

    def _shutdown(self, graceful: bool) -> None:
        if graceful and self._dead is None:
            try:
                self.request("bye", {}, timeout_s=3.0)
            except Exception:
                pass
        self._mark_dead("closed")
        try:
            self._close_stream(graceful)
        finally:
            for t in self._threads:
                t.join(timeout=2.0)
            self._threads = []


def _clip(value: Any, n: int = 80) -> str:
    """A short printable excerpt of what an agent sent, for an error message."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: n * 4]).decode("utf-8", "replace")
    text = repr(value) if not isinstance(value, str) else value
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= n else text[:n] + "..."


def check_response(msg: Dict[str, Any]) -> Dict[str, Any]:
    """``msg`` if it is a well-formed response (an integer ``v``, ``id`` string or null, a known
    ``status``, ``error`` string or null, ``result``), else raises ``ProtocolError`` naming what is
    wrong. Which version the agent speaks is checked once, at hello."""
    proto = _protocol()
    extra = sorted(set(msg) - {"v", "id", "status", "error", "result"})
    problem = None
    if not isinstance(msg.get("v"), int) or isinstance(msg.get("v"), bool):
        problem = "a response without an integer protocol version 'v'"
    elif "id" not in msg or not (msg["id"] is None or isinstance(msg["id"], str)):
        problem = "a response without a string id"
    elif msg.get("status") not in proto.STATUSES:
        problem = f"a response with unknown status {_clip(msg.get('status'))}"
    elif not (msg.get("error") is None or isinstance(msg.get("error"), str)):
        problem = "a response whose error is not a string"
    elif extra:
        problem = f"a response with unknown field(s) {_clip(', '.join(extra))}"
    if problem is not None:
        raise proto.ProtocolError(proto.BAD_JSON, problem)
    return msg


def _finite(value: Any, *, positive: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        x = float(value)
    except OverflowError:
        return False
    return math.isfinite(x) and (x > 0 if positive else x >= 0)


def check_measure_response(response: Dict[str, Any], request_id: str, device: str = "?") -> None:
    """Raise :class:`ProtocolViolation` unless ``response`` is a ``measure`` answer fit to store:
    a known status, for ``request_id``, and a result that, when there is one, is an object with
    finite, non-negative latencies (a positive median when the status is ``ok``) and a list of
    finite samples. Nothing the agent sends is stored as a measurement without passing this.
    ``device`` names the device in the error."""
    try:
        _check_measure_response(response, request_id)
    except ProtocolViolation as exc:
        raise ProtocolViolation(f"device {device}: agent broke the protocol: {exc}") from None


def _check_measure_response(response: Dict[str, Any], request_id: str) -> None:
    proto = _protocol()
    if not isinstance(response, dict) or response.get("status") not in proto.STATUSES:
        status = response.get("status") if isinstance(response, dict) else response
        raise ProtocolViolation(f"measure answer {request_id} with unknown status {_clip(status)}")
    if "id" in response and response["id"] != request_id:  # (the transport checked the rest of the envelope)
        raise ProtocolViolation(
            f"measure answer for request {_clip(response.get('id'))} instead of {_clip(request_id)}"
        )
    res = response.get("result")
    if res is None and response["status"] != proto.OK:
        return
    if not isinstance(res, dict):
        raise ProtocolViolation(f"measure answer {request_id}: the result is not an object")
    if response["status"] == proto.OK and not _finite(res.get("latency_ms_median"), positive=True):
        raise ProtocolViolation(
            f"measure answer {request_id}: status ok without a positive latency_ms_median "
            f"({_clip(res.get('latency_ms_median'))})"
        )
    for key in ("latency_ms_median", "latency_ms_mean", "latency_ms_p90"):
        if res.get(key) is not None and not _finite(res[key]):
            raise ProtocolViolation(f"measure answer {request_id}: {key} is {_clip(res[key])}")
    samples = res.get("samples_ms")
    if samples is not None and (not isinstance(samples, list) or not all(_finite(x) for x in samples)):
        raise ProtocolViolation(f"measure answer {request_id}: samples_ms is not a list of finite numbers")
