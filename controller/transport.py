"""Connections to a device's agent: JSON lines over a local subprocess or an SSH exec channel.

Two implementations of one API (:class:`Connection`):

* :class:`LocalConnection`: the agent runs as a subprocess of this machine (the built-in ``local``
  device); artifacts are put into its store by a file copy.
* :class:`SSHConnection` (paramiko): key authentication only (an explicit key file, the default
  keys in ``~/.ssh`` and a running ssh-agent; no password is ever asked for, passed or stored).
  Host keys are verified against ``~/.ssh/known_hosts`` (read only) and nnflash's own pinned file
  (``<config dir>/known_hosts``):

  - an unknown host is refused with :class:`HostKeyError` naming the host, key type and SHA256
    fingerprint, unless ``accept_new_host_key=True`` (``--accept-new-host-key``), which pins the key
    in nnflash's file like OpenSSH's ``StrictHostKeyChecking=accept-new``;
  - a *changed* key (or a host known only with another key type) is always refused.

  Connecting retries network errors with bounded exponential backoff (never host-key or
  authentication errors). SSH keepalives are sent every ``keepalive_s`` and the TCP socket gets
  ``TCP_USER_TIMEOUT`` (Linux), so a silently vanished device becomes a dropped connection within
  about ``keepalive_s + dead_peer_timeout_s``. The agent is started by an exec channel running the
  device's ``agent_command``.

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
"""

from __future__ import annotations

import abc
import base64
import collections
import getpass
import hashlib
import itertools
import os
import re
import shlex
import shutil
import socket
import stat as stat_mod
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from nnflash.controller.errors import ExportError, HostKeyError, RequestTimeout, TransportError
from nnflash.controller.inventory import Device, default_config_dir
from nnflash_agent.fileio import sha256_file

__all__ = [
    "Connection",
    "LocalConnection",
    "SSHConnection",
    "ArtifactPut",
    "connect",
    "probe",
    "make_connection",
    "fingerprint",
    "default_known_hosts_path",
    "default_pinned_hosts_path",
]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")
INCOMING_DIR = ".incoming"


def _protocol() -> Any:
    """The wire protocol module, imported at call time (``agent/protocol.py``, stdlib only)."""
    from nnflash_agent import protocol

    return protocol


def default_known_hosts_path() -> Path:
    """The user's OpenSSH known_hosts (read, never written)."""
    return Path.home() / ".ssh" / "known_hosts"


def default_pinned_hosts_path() -> Path:
    """nnflash's own known_hosts: keys pinned by ``--accept-new-host-key``."""
    return default_config_dir() / "known_hosts"


def fingerprint(key: Any) -> str:
    """OpenSSH-style fingerprint of a paramiko key: ``SHA256:<base64 without padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


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

    def __init__(self, device: Device, *, hello_timeout_s: float = 60.0) -> None:
        self.device = device
        self.hello_timeout_s = hello_timeout_s
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
                raise self._error(f"not connected ({self._dead})", rid)
            if rid in self._pending:
                raise TransportError(f"device {self.name}: request id {rid!r} already in flight")
            self._pending[rid] = pending
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
        return dict((response.get("result") or {}).get("results") or {})

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
        if not _SHA256_RE.match(sha256 or ""):
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

    def _error(self, message: str, request_id: Optional[str] = None) -> TransportError:
        tail = "; ".join(list(self._stderr_tail)[-3:])
        text = f"device {self._describe()}: {message}"
        if tail:
            text += f" [agent stderr: {tail}]"
        exc = TransportError(text)
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
        theirs = result.get("protocol")
        if theirs != proto.PROTOCOL_VERSION:
            raise self._error(
                f"protocol version mismatch: the agent speaks v{theirs}, this controller "
                f"v{proto.PROTOCOL_VERSION}; install the matching nnflash-agent on the device"
            )
        if not result.get("store_dir"):
            raise self._error("agent's hello did not report a store_dir")
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
                for raw in lines:
                    text = raw.decode("utf-8", "replace").strip()
                    if text:
                        self._stderr_tail.append(text[:500])

        t = threading.Thread(target=loop, name=f"nnflash-{self.name}-stderr", daemon=True)
        t.start()
        self._threads.append(t)

    def _reader_loop(self, read: Callable[[], bytes]) -> None:
        proto = _protocol()
        buf = b""
        reason = "agent closed its output"
        while True:
            try:
                chunk = read()
            except Exception as exc:  # socket/paramiko errors
                reason = f"read failed: {exc}"
                break
            if not chunk:
                reason = self._eof_reason()
                break
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl], buf[nl + 1 :]
                if not line.strip():
                    continue
                try:
                    msg = proto.decode(line)
                except proto.ProtocolError:
                    self._stderr_tail.append("stdout: " + line.decode("utf-8", "replace")[:300])
                    continue
                rid = msg.get("id")
                with self._lock:
                    pending = self._pending.get(rid) if isinstance(rid, str) else None
                if pending is None:
                    if msg.get("status") not in (None, "ok"):
                        self._stderr_tail.append(f"unmatched response {rid!r}: {msg.get('status')}: {msg.get('error')}")
                    continue
                pending.response = msg
                pending.event.set()
        self._mark_dead(reason)

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


# --------------------------------------------------------------------------------------------------
# Local subprocess


def _agent_path_entry() -> Path:
    """The ``sys.path`` entry this process imports ``nnflash_agent`` from (``src/`` in a checkout)."""
    import nnflash_agent

    return Path(nnflash_agent.__file__).parent.parent


class LocalConnection(Connection):
    """The agent as a subprocess of this machine (device kind ``local``).

    ``store_dir`` and ``journal_path`` (optional) are passed to the agent as ``--store DIR`` and
    ``--journal FILE``; without them the agent uses its defaults (under ``$XDG_CACHE_HOME``).
    """

    def __init__(
        self,
        device: Device,
        *,
        store_dir: Optional[os.PathLike[str] | str] = None,
        journal_path: Optional[os.PathLike[str] | str] = None,
        env: Optional[Dict[str, str]] = None,
        hello_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(device, hello_timeout_s=hello_timeout_s)
        self.store_dir_option = Path(store_dir) if store_dir is not None else None
        self.journal_path_option = Path(journal_path) if journal_path is not None else None
        self._env = env
        self._proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def argv(self) -> List[str]:
        argv = self.device.agent_argv
        if self.store_dir_option is not None:
            argv += ["--store", str(self.store_dir_option)]
        if self.journal_path_option is not None:
            argv += ["--journal", str(self.journal_path_option)]
        return argv

    def _describe(self) -> str:
        return f"{self.name} (local subprocess)"

    def _start(self) -> None:
        env = dict(os.environ if self._env is None else self._env)
        # `-m nnflash_agent.cli` imports the agent this controller runs with (a checkout's, too)
        parts = [str(_agent_path_entry())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                bufsize=0,
            )
        except OSError as exc:
            raise TransportError(
                f"device {self._describe()}: cannot start agent {self.argv[0]!r}: {exc.strerror or exc}"
            ) from None
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        self._start_reader(lambda: os.read(out_fd, 65536), "out")
        self._start_stderr_reader(lambda: os.read(err_fd, 65536))

    def _eof_reason(self) -> str:
        proc = self._proc
        if proc is None:
            return "agent closed its output"
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "agent closed its output"
        return f"agent exited with status {code}"

    def _write(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise TransportError("not connected")
        proc.stdin.write(data)
        proc.stdin.flush()

    def _close_stream(self, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=3.0 if graceful else 0.5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def _remote_size(self, path: str) -> Optional[int]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_size if stat_mod.S_ISREG(st.st_mode) else None

    def _remote_sha256(self, path: str) -> str:
        return sha256_file(path)

    def _remote_mkdirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def _upload(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def _remote_rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def _remote_remove_quiet(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# SSH


_HASH_PY = "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"


def _hash_command(path_expr: str) -> str:
    """Shell code printing ``<hex> ...`` for one file: coreutils, else Python's hashlib."""
    py = shlex.quote(_HASH_PY)
    return f"sha256sum -- {path_expr} 2>/dev/null || python3 -c {py} {path_expr} 2>/dev/null"


# The helper loop: one path per input line -> one line with its hash (empty if unreadable).
_HASHER_LOOP = "sh -c " + shlex.quote(
    "while IFS= read -r p; do h=$(" + _hash_command('"$p"') + '); echo "${h%% *}"; done'
)


def _hostkey_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class SSHConnection(Connection):
    """The agent behind SSH (paramiko), started with an exec channel; SFTP for artifacts.

    ``known_hosts_path``: the user's OpenSSH known_hosts, read only (default ``~/.ssh/known_hosts``;
    pass a path that does not exist to ignore it). ``pinned_hosts_path``: nnflash's own file, where
    ``accept_new_host_key=True`` records new keys (default ``<config dir>/known_hosts``).
    ``look_for_keys`` / ``allow_agent``: also try ``~/.ssh/id_*`` and a running ssh-agent (the way
    to use a passphrase-protected key: nnflash never asks for or stores a passphrase).
    ``retries``, ``backoff_s``, ``backoff_max_s``: connection attempts after the first, with
    sleeps ``backoff_s * 2**k`` capped at ``backoff_max_s``.
    """

    def __init__(
        self,
        device: Device,
        *,
        known_hosts_path: Optional[os.PathLike[str] | str] = None,
        pinned_hosts_path: Optional[os.PathLike[str] | str] = None,
        accept_new_host_key: bool = False,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 15.0,
        dead_peer_timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        look_for_keys: bool = True,
        allow_agent: bool = True,
        hello_timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(device, hello_timeout_s=hello_timeout_s)
        if device.kind != "ssh":
            raise TransportError(f"device {device.name} is not an SSH device (kind {device.kind})")
        self.known_hosts_path = Path(known_hosts_path) if known_hosts_path is not None else default_known_hosts_path()
        self.pinned_hosts_path = (
            Path(pinned_hosts_path) if pinned_hosts_path is not None else default_pinned_hosts_path()
        )
        self.accept_new_host_key = accept_new_host_key
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.dead_peer_timeout_s = dead_peer_timeout_s
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.look_for_keys = look_for_keys
        self.allow_agent = allow_agent
        self._sleep = sleep
        self._client: Any = None
        self._chan: Any = None
        self._sftp: Any = None
        self._hasher: Any = None
        self._hasher_reader: Any = None
        self._hasher_lock = threading.Lock()
        self._sftp_lock = threading.RLock()
        self.connect_attempts = 0
        #: (name, key type, fingerprint) when accept_new_host_key pinned a key on this connection
        self.pinned_key: Optional[Tuple[str, str, str]] = None

    @property
    def user(self) -> str:
        return self.device.user or getpass.getuser()

    def _describe(self) -> str:
        return f"{self.name} ({self.user}@{self.device.host}:{self.device.port})"

    # ---- connecting

    def _start(self) -> None:
        self._client = self._connect_with_retries()
        transport = self._client.get_transport()
        if self.keepalive_s and self.keepalive_s > 0:
            transport.set_keepalive(max(1, int(round(self.keepalive_s))))
        try:
            chan = transport.open_session(timeout=self.connect_timeout_s)
            chan.exec_command(self.device.agent_command)
        except Exception as exc:
            self._close_client()
            raise self._error(f"cannot start the agent ({self.device.agent_command!r}): {exc}") from None
        self._chan = chan
        self._start_reader(lambda: chan.recv(65536), "out")
        self._start_stderr_reader(lambda: chan.recv_stderr(65536))

    def connect_client(self) -> Any:
        """A connected, authenticated ``paramiko.SSHClient`` with the host-key rules applied and no
        agent started (for installers and one-off commands); the caller closes it."""
        return self._connect_with_retries()

    def _connect_with_retries(self) -> Any:
        import paramiko

        if self.device.key_file:
            key_path = Path(os.path.expanduser(self.device.key_file))
            if not key_path.is_file():
                raise TransportError(f"device {self._describe()}: key file {key_path} not found (check --key)")
        attempts = self.retries + 1
        last: Optional[BaseException] = None
        for attempt in range(attempts):
            self.connect_attempts = attempt + 1
            try:
                return self._connect_once()
            except HostKeyError:
                raise
            except _NoRetry as exc:
                raise TransportError(str(exc)) from None
            except paramiko.BadHostKeyException as exc:  # pragma: no cover - handled in _connect_once
                raise HostKeyError(str(exc)) from None
            except paramiko.AuthenticationException as exc:
                key = f" with key {self.device.key_file}" if self.device.key_file else ""
                raise TransportError(
                    f"device {self._describe()}: authentication failed{key} ({exc}). nnflash uses "
                    "key authentication only: install your public key in the device's "
                    "~/.ssh/authorized_keys (ssh-copy-id) or set --key"
                ) from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last = exc
                if attempt + 1 < attempts:
                    self._sleep(min(self.backoff_s * (2**attempt), self.backoff_max_s))
        raise TransportError(f"device {self._describe()}: cannot connect after {attempts} attempt(s): {_short(last)}")

    def _connect_once(self) -> Any:
        import paramiko

        client = paramiko.SSHClient()
        known = self._load_host_keys(self.known_hosts_path)
        pinned = self._load_host_keys(self.pinned_hosts_path)
        for hostkeys, into in ((known, client.get_host_keys()),):
            for name in hostkeys.keys():
                for ktype, key in hostkeys[name].items():
                    into.add(name, ktype, key)
        for name in pinned.keys():
            for ktype, key in pinned[name].items():
                client.get_host_keys().add(name, ktype, key)
        client.set_missing_host_key_policy(_Policy(self, known, pinned))
        key_file = os.path.expanduser(self.device.key_file) if self.device.key_file else None
        sock = self._open_socket()
        try:
            client.connect(
                hostname=self.device.host,
                port=self.device.port,
                sock=sock,
                username=self.user,
                key_filename=key_file,
                look_for_keys=self.look_for_keys,
                allow_agent=self.allow_agent,
                timeout=self.connect_timeout_s,
                banner_timeout=self.connect_timeout_s,
                auth_timeout=self.connect_timeout_s,
                channel_timeout=self.connect_timeout_s,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = _hostkey_name(self.device.host, self.device.port)
            where = self._files_with(name, known, pinned)
            raise HostKeyError(
                f"HOST KEY CHANGED for {name} (device {self.name}): expected "
                f"{exc.expected_key.get_name()} {fingerprint(exc.expected_key)}, the server "
                f"offered {exc.key.get_name()} {fingerprint(exc.key)}. This is either a "
                "reinstalled device or an attack; refusing to connect. If the change is "
                f"expected, remove the old key (ssh-keygen -R '{name}' -f {where}) and connect "
                "again with --accept-new-host-key."
            ) from None
        except BaseException:
            client.close()
            sock.close()
            raise
        return client

    def _open_socket(self) -> socket.socket:
        """TCP connection with kernel keepalives and ``TCP_USER_TIMEOUT`` (Linux), so a peer that
        vanishes silently (pulled cable, Wi-Fi gone) turns into a read error within about
        ``keepalive_s + dead_peer_timeout_s`` instead of TCP's default of many minutes."""
        try:
            sock = socket.create_connection((self.device.host, self.device.port), timeout=self.connect_timeout_s)
        except socket.gaierror as exc:
            raise _NoRetry(f"device {self._describe()}: cannot resolve host {self.device.host!r}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(self.keepalive_s or 15))
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", idle),
            ("TCP_KEEPCNT", 3),
            ("TCP_USER_TIMEOUT", int(self.dead_peer_timeout_s * 1000)),
        ):
            opt = getattr(socket, name, None)
            if opt is not None and value > 0:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
                except OSError:
                    pass
        return sock

    @staticmethod
    def _load_host_keys(path: Path) -> Any:
        import paramiko

        keys = paramiko.HostKeys()
        if path.is_file():
            try:
                keys.load(str(path))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"cannot read known hosts file {path}: {exc}") from None
        return keys

    def _files_with(self, name: str, known: Any, pinned: Any) -> str:
        files = []
        if known.lookup(name) is not None:
            files.append(str(self.known_hosts_path))
        if pinned.lookup(name) is not None:
            files.append(str(self.pinned_hosts_path))
        return " / ".join(files) or str(self.pinned_hosts_path)

    def _pin(self, name: str, key: Any) -> None:
        path = self.pinned_hosts_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="ascii") as fh:
                fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise HostKeyError(f"cannot record the host key of {name} in {path}: {exc.strerror or exc}") from None
        self.pinned_key = (name, key.get_name(), fingerprint(key))

    # ---- stream

    def _eof_reason(self) -> str:
        chan = self._chan
        if chan is not None:
            # the exit status travels after the end of output: give it a moment to arrive
            deadline = time.monotonic() + 1.0
            while not chan.exit_status_ready() and time.monotonic() < deadline and not chan.closed:
                time.sleep(0.01)
            if chan.exit_status_ready():
                status = chan.recv_exit_status()
                if status == 127:  # the shell found no such command
                    return (
                        f"agent exited with status 127: {self.device.agent_command!r} is not on the device; "
                        f"install it with 'nnflash agent install {self.name}'"
                    )
                return f"agent exited with status {status}"
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            return "SSH connection lost"
        return "agent closed its output"

    def _write(self, data: bytes) -> None:
        chan = self._chan
        if chan is None or chan.closed:
            raise TransportError("channel closed")
        chan.sendall(data)

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _close_stream(self, graceful: bool) -> None:
        self._close_hasher()
        sftp, self._sftp = self._sftp, None
        chan, self._chan = self._chan, None
        for obj in (sftp, chan):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        self._close_client()

    # ---- files

    def _sftp_client(self) -> Any:
        if self._dead is not None or self._client is None:
            raise self._error(f"not connected ({self._dead})")
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except Exception as exc:
                raise self._error(f"cannot open SFTP: {exc}") from None
        return self._sftp

    def _sftp_call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        with self._sftp_lock:  # one SFTP session per connection, used by one thread at a time
            return self._sftp_call_locked(what, fn)

    def _sftp_call_locked(self, what: str, fn: Callable[[Any], Any]) -> Any:
        sftp = self._sftp_client()
        try:
            return fn(sftp)
        except FileNotFoundError:
            raise
        except (OSError, EOFError) as exc:
            raise self._error(f"SFTP {what} failed: {exc}") from None
        except Exception as exc:  # paramiko.SSHException
            raise self._error(f"SFTP {what} failed: {exc}") from None

    def _remote_size(self, path: str) -> Optional[int]:
        try:
            st = self._sftp_call(f"stat {path}", lambda s: s.stat(path))
        except FileNotFoundError:
            return None
        if st.st_mode is not None and not stat_mod.S_ISREG(st.st_mode):
            return None
        return int(st.st_size) if st.st_size is not None else None

    def _remote_mkdirs(self, path: str) -> None:
        # Only the last component is created: the agent creates its store directory itself.
        try:
            self._sftp_call(f"stat {path}", lambda s: s.stat(path))
        except FileNotFoundError:
            try:
                self._sftp_call(f"mkdir {path}", lambda s: s.mkdir(path, 0o700))
            except FileNotFoundError:
                raise self._error(f"cannot create {path}: its parent does not exist") from None

    def _upload(self, local: Path, remote: str) -> None:
        try:
            self._sftp_call(f"upload to {remote}", lambda s: s.put(str(local), remote, confirm=True))
        except FileNotFoundError:
            raise self._error(f"SFTP upload to {remote}: no such directory") from None

    def _remote_rename(self, src: str, dst: str) -> None:
        def rename(s: Any) -> None:
            try:
                s.posix_rename(src, dst)  # OpenSSH extension: atomic, overwrites
            except OSError:
                try:
                    s.remove(dst)
                except OSError:
                    pass
                s.rename(src, dst)

        try:
            self._sftp_call(f"rename {src}", rename)
        except FileNotFoundError:
            raise self._error(f"SFTP rename {src}: file vanished") from None

    def _remote_remove_quiet(self, path: str) -> None:
        try:
            self._sftp_call(f"remove {path}", lambda s: s.remove(path))
        except (FileNotFoundError, TransportError):
            pass

    def _remote_sha256(self, path: str) -> str:
        """sha256 of a file on the device, computed there ('' if it cannot be read).

        Uses one long-lived helper shell per connection (a path per line in, a hash per line out):
        an exec per file would start the user's login shell each time, which costs hundreds of
        milliseconds when ~/.bashrc is heavy."""
        if "\n" in path or "\r" in path:
            out = self.exec(_hash_command(shlex.quote(path)), timeout_s=120.0)
            token = out.split()[0].lower() if out.split() else ""
            return token if _SHA256_RE.match(token) else ""
        with self._hasher_lock:
            if self._hasher is None or self._hasher.closed:
                self._hasher = self._open_hasher()
            chan, reader = self._hasher, self._hasher_reader
            try:
                chan.sendall(path.encode("utf-8") + b"\n")
                line = reader.readline()
            except Exception as exc:
                self._close_hasher()
                raise self._error(f"remote sha256 of {path} failed: {exc}") from None
            if not line.endswith(b"\n"):
                self._close_hasher()
                raise self._error(f"remote sha256 of {path}: helper shell ended")
        token = line.decode("ascii", "replace").strip().lower()
        return token if _SHA256_RE.match(token) else ""

    def _open_hasher(self) -> Any:
        client = self._client
        if self._dead is not None or client is None:
            raise self._error(f"not connected ({self._dead})")
        try:
            chan = client.get_transport().open_session(timeout=self.connect_timeout_s)
            chan.settimeout(120.0)
            chan.exec_command(_HASHER_LOOP)
        except Exception as exc:
            raise self._error(f"cannot start the sha256 helper: {exc}") from None
        self._hasher_reader = chan.makefile("rb")
        return chan

    def _close_hasher(self) -> None:
        chan, self._hasher = self._hasher, None
        if chan is not None:
            try:
                chan.close()
            except Exception:
                pass

    def exec(self, command: str, timeout_s: float = 60.0) -> str:
        """Run one command on the device (separate exec channel); returns its stdout as text."""
        client = self._client
        if self._dead is not None or client is None:
            raise self._error(f"not connected ({self._dead})")
        try:
            chan = client.get_transport().open_session(timeout=self.connect_timeout_s)
            chan.settimeout(timeout_s)
            chan.exec_command(command)
            chunks = []
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                chunks.append(data)
            chan.close()
        except socket.timeout:
            raise self._error(f"command timed out after {timeout_s:g} s: {command}") from None
        except Exception as exc:
            raise self._error(f"command failed ({exc}): {command}") from None
        return b"".join(chunks).decode("utf-8", "replace")


class _Policy:
    """paramiko MissingHostKeyPolicy: refuse unknown hosts unless accept-new; never accept a host
    that is known with a different key type (treated as a changed key)."""

    def __init__(self, conn: SSHConnection, known: Any, pinned: Any) -> None:
        self.conn = conn
        self.known = known
        self.pinned = pinned

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        conn = self.conn
        fp = fingerprint(key)
        recorded: List[str] = []
        for keys in (self.known, self.pinned):
            entry = keys.lookup(hostname)
            if entry is not None:
                recorded.extend(f"{t} {fingerprint(k)}" for t, k in entry.items())
        if recorded:
            raise HostKeyError(
                f"HOST KEY CHANGED for {hostname} (device {conn.name}): known as "
                f"{', '.join(recorded)}, the server offered {key.get_name()} {fp}. Refusing to "
                f"connect. If the change is expected, remove the old key (ssh-keygen -R "
                f"'{hostname}' -f {conn._files_with(hostname, self.known, self.pinned)}) and "
                "connect again with --accept-new-host-key."
            )
        if not conn.accept_new_host_key:
            raise HostKeyError(
                f"unknown host key for {hostname} (device {conn.name}): {key.get_name()} {fp}. "
                "Check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                "then connect again with --accept-new-host-key to pin it in "
                f"{conn.pinned_hosts_path}."
            )
        conn._pin(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


class _NoRetry(Exception):
    """A connection error that retrying cannot fix."""


def _short(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Factory


def make_connection(device: Device, **options: Any) -> Connection:
    """A (not yet opened) connection for ``device``: :class:`LocalConnection` for kind ``local``,
    :class:`SSHConnection` otherwise. ``options`` go to the constructor (options meant for the other
    kind are ignored, so a caller can pass one set for every device)."""
    if device.kind == "local":
        allowed = {"store_dir", "journal_path", "env", "hello_timeout_s"}
        return LocalConnection(device, **{k: v for k, v in options.items() if k in allowed})
    local_only = {"store_dir", "journal_path", "env"}
    return SSHConnection(device, **{k: v for k, v in options.items() if k not in local_only})


def connect(device: Device, **options: Any) -> Connection:
    """:func:`make_connection` + :meth:`Connection.open`."""
    conn = make_connection(device, **options)
    conn.open()
    return conn


def probe(device: Device, **options: Any) -> Dict[str, Any]:
    """Connect, say hello, time a round trip, disconnect (``nnflash devices check``).

    Returns ``{"device", "kind", "address", "open_ms", "rtt_ms", "agent_version", "protocol",
    "store_dir", "facts", "pinned_host_key"}``; raises :class:`TransportError` /
    :class:`HostKeyError` like :meth:`Connection.open`."""
    conn = make_connection(device, **options)
    t0 = time.perf_counter()
    hello = conn.open()
    open_ms = (time.perf_counter() - t0) * 1e3
    try:
        rtt_ms = min(conn.ping() for _ in range(3))
    finally:
        conn.close()
    pinned = getattr(conn, "pinned_key", None)
    address = None if device.kind == "local" else f"{device.host}:{device.port}"
    return {
        "device": device.name,
        "kind": device.kind,
        "address": address,
        "open_ms": open_ms,
        "rtt_ms": rtt_ms,
        "agent_version": hello.get("agent_version"),
        "protocol": hello.get("protocol"),
        "store_dir": hello.get("store_dir"),
        "facts": dict(hello.get("facts") or {}),
        "pinned_host_key": ({"name": pinned[0], "type": pinned[1], "fingerprint": pinned[2]} if pinned else None),
    }
