"""The SSH backend (paramiko): an authenticated session to a device, and the agent behind it.

* :class:`SSHSession`: exec channels and SFTP over one authenticated client, no agent. The
  connection uses one for artifacts next to the agent's channel; the installer
  (:mod:`nnflash.controller.agent_install`) gets one from :meth:`SSHConnection.open_session`.
* :class:`SSHConnection`: key authentication only (an explicit key file, the default keys in
  ``~/.ssh`` and a running ssh-agent; no password is ever asked for, passed or stored), host keys
  checked by :mod:`.hostkeys`. Connecting retries network errors with bounded exponential backoff
  (never host-key or authentication errors). SSH keepalives are sent every ``keepalive_s`` and the
  TCP socket gets ``TCP_USER_TIMEOUT`` (Linux), so a silently vanished device becomes a dropped
  connection within about ``keepalive_s + dead_peer_timeout_s``. The agent is started by an exec
  channel running the device's ``agent_command``.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import stat as stat_mod
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from nnflash.controller.errors import HostKeyError, TransportError
from nnflash.controller.inventory import Device
from nnflash.controller.transport.base import DEFAULT_MAX_LINE_BYTES, SHA256_RE, Connection
from nnflash.controller.transport.hostkeys import (
    apply_host_keys,
    changed_key_error,
    default_known_hosts_path,
    default_pinned_hosts_path,
    hostkey_name,
)

__all__ = ["CommandResult", "SSHConnection", "SSHSession"]

_HASH_PY = "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"


def _hash_command(path_expr: str) -> str:
    """Shell code printing ``<hex> ...`` for one file: coreutils, else Python's hashlib."""
    py = shlex.quote(_HASH_PY)
    return f"sha256sum -- {path_expr} 2>/dev/null || python3 -c {py} {path_expr} 2>/dev/null"


# The helper loop: one path per input line -> one line with its hash (empty if unreadable).
_HASHER_LOOP = "sh -c " + shlex.quote(
    "while IFS= read -r p; do h=$(" + _hash_command('"$p"') + '); echo "${h%% *}"; done'
)


@dataclass
class CommandResult:
    """What a command run on the device gave: exit status, stdout and stderr (text)."""

    rc: int
    out: str
    err: str


def _close_quietly(obj: Any) -> None:
    if obj is not None:
        try:
            obj.close()
        except Exception:
            pass


class SSHSession:
    """Exec channels and SFTP over one authenticated ``paramiko.SSHClient`` (no agent started).

    ``describe`` names the device in errors (``device NAME (user@host:port)``); ``error`` makes the
    :class:`TransportError` for a message (default: ``describe: message``). One SFTP session and one
    sha256 helper shell are opened on first use and shared by the threads using this session.
    """

    def __init__(
        self,
        client: Any,
        describe: str,
        *,
        channel_timeout_s: float = 10.0,
        error: Optional[Callable[[str], TransportError]] = None,
    ) -> None:
        self.client = client
        self.describe = describe
        self.channel_timeout_s = channel_timeout_s
        self._make_error = error
        self._sftp: Any = None
        self._sftp_lock = threading.RLock()
        self._hasher: Any = None
        self._hasher_reader: Any = None
        self._hasher_lock = threading.Lock()

    def _error(self, message: str) -> TransportError:
        if self._make_error is not None:
            return self._make_error(message)
        return TransportError(f"{self.describe}: {message}")

    def _open_channel(self, timeout_s: float) -> Any:
        chan = self.client.get_transport().open_session(timeout=self.channel_timeout_s)
        chan.settimeout(timeout_s)
        return chan

    # ---- commands

    def run(self, command: str, timeout_s: float = 600.0, stdin: Optional[bytes] = None) -> CommandResult:
        """Run ``command`` on the device (its own exec channel), feeding it ``stdin``; returns its
        exit status and output. Raises :class:`TransportError` when it cannot run or takes longer
        than ``timeout_s``."""
        try:
            chan = self._open_channel(timeout_s)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout_s
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready():
                    while chan.recv_ready():
                        out += chan.recv(65536)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise socket.timeout()
                time.sleep(0.02)
            rc = chan.recv_exit_status()
            chan.close()
        except socket.timeout:
            raise self._error(f"command timed out after {timeout_s:g} s: {command}") from None
        except Exception as exc:
            raise self._error(f"command failed ({exc}): {command}") from None
        return CommandResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def exec(self, command: str, timeout_s: float = 60.0) -> str:
        """:meth:`run` without input; returns stdout only."""
        return self.run(command, timeout_s).out

    # ---- files (SFTP)

    def _sftp_client(self) -> Any:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except Exception as exc:
                raise self._error(f"cannot open SFTP: {exc}") from None
        return self._sftp

    def sftp_call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(sftp)`` with errors turned into :class:`TransportError` (``FileNotFoundError``
        passes through)."""
        with self._sftp_lock:  # one SFTP session, used by one thread at a time
            sftp = self._sftp_client()
            try:
                return fn(sftp)
            except FileNotFoundError:
                raise
            except (OSError, EOFError) as exc:
                raise self._error(f"SFTP {what} failed: {exc}") from None
            except Exception as exc:  # paramiko.SSHException
                raise self._error(f"SFTP {what} failed: {exc}") from None

    def size(self, path: str) -> Optional[int]:
        """Size of a regular file, None if there is none."""
        try:
            st = self.sftp_call(f"stat {path}", lambda s: s.stat(path))
        except FileNotFoundError:
            return None
        if st.st_mode is not None and not stat_mod.S_ISREG(st.st_mode):
            return None
        return int(st.st_size) if st.st_size is not None else None

    def mkdir(self, path: str) -> None:
        """Create ``path`` (mode 0700) unless it exists; its parent must exist."""
        try:
            self.sftp_call(f"stat {path}", lambda s: s.stat(path))
        except FileNotFoundError:
            try:
                self.sftp_call(f"mkdir {path}", lambda s: s.mkdir(path, 0o700))
            except FileNotFoundError:
                raise self._error(f"cannot create {path}: its parent does not exist") from None

    def upload(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` (written in place: upload to a temporary name, then
        :meth:`rename`)."""
        try:
            self.sftp_call(f"upload to {remote}", lambda s: s.put(str(local), remote, confirm=True))
        except FileNotFoundError:
            raise self._error(f"SFTP upload to {remote}: no such directory") from None

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, replacing it (atomically where the server supports the
        OpenSSH posix-rename extension)."""

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
            self.sftp_call(f"rename {src}", rename)
        except FileNotFoundError:
            raise self._error(f"SFTP rename {src}: file vanished") from None

    def remove_quiet(self, path: str) -> None:
        """Remove a file; a missing file or a failure is ignored."""
        try:
            self.sftp_call(f"remove {path}", lambda s: s.remove(path))
        except (FileNotFoundError, TransportError):
            pass

    def sha256(self, path: str) -> str:
        """sha256 of a file on the device, computed there ('' if it cannot be read).

        Uses one long-lived helper shell per session (a path per line in, a hash per line out):
        an exec per file would start the user's login shell each time, which costs hundreds of
        milliseconds when ~/.bashrc is heavy."""
        if "\n" in path or "\r" in path:
            out = self.exec(_hash_command(shlex.quote(path)), timeout_s=120.0)
            token = out.split()[0].lower() if out.split() else ""
            return token if SHA256_RE.match(token) else ""
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
        return token if SHA256_RE.match(token) else ""

    def _open_hasher(self) -> Any:
        try:
            chan = self._open_channel(120.0)
            chan.exec_command(_HASHER_LOOP)
        except Exception as exc:
            raise self._error(f"cannot start the sha256 helper: {exc}") from None
        self._hasher_reader = chan.makefile("rb")
        return chan

    def _close_hasher(self) -> None:
        chan, self._hasher = self._hasher, None
        _close_quietly(chan)

    def close(self) -> None:
        """Close the helper shell, SFTP and the client. Safe to call twice."""
        self._close_hasher()
        sftp, self._sftp = self._sftp, None
        _close_quietly(sftp)
        _close_quietly(self.client)

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NoRetry(Exception):
    """A connection error that retrying cannot fix."""


def _short(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


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
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(device, hello_timeout_s=hello_timeout_s, max_line_bytes=max_line_bytes)
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
        self._session: Optional[SSHSession] = None
        self._chan: Any = None
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
        client = self._connect_with_retries()
        transport = client.get_transport()
        if self.keepalive_s and self.keepalive_s > 0:
            transport.set_keepalive(max(1, int(round(self.keepalive_s))))
        try:
            chan = transport.open_session(timeout=self.connect_timeout_s)
            chan.exec_command(self.device.agent_command)
        except Exception as exc:
            _close_quietly(client)
            raise self._error(f"cannot start the agent ({self.device.agent_command!r}): {exc}") from None
        self._session = SSHSession(
            client, f"device {self._describe()}", channel_timeout_s=self.connect_timeout_s, error=self._error
        )
        self._chan = chan
        self._start_reader(lambda: chan.recv(65536), "out")
        self._start_stderr_reader(lambda: chan.recv_stderr(65536))

    def open_session(self) -> SSHSession:
        """A connected :class:`SSHSession` with the host-key rules applied and no agent started
        (the installer's commands and uploads, pinning a host key); the caller closes it."""
        # a busy device (pip installing) may be slow to hand out channels: allow at least 30 s
        return SSHSession(
            self._connect_with_retries(),
            f"device {self._describe()}",
            channel_timeout_s=max(self.connect_timeout_s, 30.0),
        )

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
        known, pinned = apply_host_keys(client, self)
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
            name = hostkey_name(self.device.host, self.device.port)
            raise changed_key_error(self, name, exc, known, pinned) from None
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
        session = self._session
        transport = session.client.get_transport() if session is not None else None
        if transport is None or not transport.is_active():
            return "SSH connection lost"
        return "agent closed its output"

    def _write(self, data: bytes) -> None:
        chan = self._chan
        if chan is None or chan.closed:
            raise TransportError("channel closed")
        chan.sendall(data)

    def _close_stream(self, graceful: bool) -> None:
        chan, self._chan = self._chan, None
        session, self._session = self._session, None
        _close_quietly(chan)
        if session is not None:
            session.close()

    # ---- files and commands, on the session next to the agent's channel

    def _live(self) -> SSHSession:
        session = self._session
        if self._dead is not None or session is None:
            raise self._error(f"not connected ({self._dead})")
        return session

    def _remote_size(self, path: str) -> Optional[int]:
        return self._live().size(path)

    def _remote_mkdirs(self, path: str) -> None:
        # Only the last component is created: the agent creates its store directory itself.
        self._live().mkdir(path)

    def _upload(self, local: Path, remote: str) -> None:
        self._live().upload(local, remote)

    def _remote_rename(self, src: str, dst: str) -> None:
        self._live().rename(src, dst)

    def _remote_remove_quiet(self, path: str) -> None:
        try:
            self._live().remove_quiet(path)
        except TransportError:
            pass

    def _remote_sha256(self, path: str) -> str:
        return self._live().sha256(path)

    def exec(self, command: str, timeout_s: float = 60.0) -> str:
        """Run one command on the device (separate exec channel); returns its stdout as text."""
        return self._live().exec(command, timeout_s)
