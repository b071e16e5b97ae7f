"""The long-running agent: ``nnflash-agent serve --socket PATH`` and ``nnflash-agent connect``.

On a Raspberry Pi 3B, starting an agent costs seconds (Python, numpy and the runtime are read from
the SD card and imported). A long-running agent pays that once: it listens on a **UNIX socket**
(mode 0600 in a directory only its user can enter; nothing listens on the network) and serves the
same JSON-lines protocol to one client at a time, keeping its spare measurement worker between
sessions. ``nnflash-agent connect`` is the tiny bridge the controller runs over SSH instead of
``serve``: it copies stdin to the socket and the socket to stdout, and with ``--fallback`` starts an
on-demand ``serve`` when no daemon answers, so the same agent command works with or without it.

Sessions are served one after another: a second controller waits until the first one is done,
which keeps two measurements from sharing the device. A session that ends mid-measurement (the
link dropped) is finished and journaled as usual; the next session can fetch it with ``results``.
SIGTERM / SIGINT stop the daemon (a measurement in flight is stopped with its worker).
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from typing import IO, Any, Optional, cast

from nnflash_agent.serve import _log

__all__ = ["default_socket_path", "serve_socket", "connect", "DaemonError"]


class DaemonError(Exception):
    """The socket cannot be used (another daemon runs there, bad permissions, ...)."""


def default_socket_path() -> str:
    """``<agent cache dir>/agent.sock`` (``~/.cache/nnflash-agent/agent.sock`` by default)."""
    from nnflash_agent.store import _cache_root

    return os.path.join(_cache_root(), "agent.sock")


def _prepare(path: str) -> socket.socket:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o022:
        raise DaemonError(f"{directory} must be owned by this user and not writable by others")
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise DaemonError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket of a daemon that died
        else:
            raise DaemonError(f"another agent is already serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def serve_socket(agent: Any, path: str, *, max_sessions: Optional[int] = None) -> int:
    """Serve ``agent`` on the UNIX socket ``path`` until a signal stops it (or ``max_sessions``
    sessions were served: tests). Returns the exit code."""
    from nnflash_agent.serve import install_stop_signals, serve

    sock = _prepare(path)
    os.dup2(2, 1)  # stray prints of libraries go to the log, never to a client
    sys.stdout = sys.stderr
    install_stop_signals()
    _log(f"listening on {path}")
    served = 0
    try:
        while max_sessions is None or served < max_sessions:
            try:
                conn, _ = sock.accept()
            except KeyboardInterrupt:
                _log("stopped by a signal")
                return 0
            served += 1
            with conn:
                rfile = conn.makefile("rb")
                wfile = cast(IO[bytes], conn.makefile("wb", buffering=0))
                try:
                    rc = serve(agent, rfile, wfile, close_agent=False)
                finally:
                    for f in (rfile, wfile):
                        try:
                            f.close()
                        except OSError:
                            pass
            if rc == 130:  # a signal arrived during the session
                return 0
        return 0
    finally:
        sock.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        agent.close()


def connect(path: str) -> int:
    """Bridge stdin/stdout to the daemon at ``path``. Raises ``OSError`` when no daemon answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()

    def upstream() -> None:
        try:
            while True:
                data = os.read(stdin_fd, 65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return 0
            view = memoryview(data)
            while view:
                n = os.write(stdout_fd, view)
                view = view[n:]
    except (BrokenPipeError, ConnectionResetError):
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()
