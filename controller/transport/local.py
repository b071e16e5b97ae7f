"""The local backend: the agent as a subprocess of this machine (the built-in ``local`` device);
artifacts are put into its store by a file copy."""

from __future__ import annotations

import os
import shutil
import stat as stat_mod
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from nnflash.controller.errors import TransportError
from nnflash.controller.inventory import Device
from nnflash.controller.transport.base import DEFAULT_MAX_LINE_BYTES, Connection
from nnflash_agent.fileio import sha256_file

__all__ = ["LocalConnection"]


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
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__(device, hello_timeout_s=hello_timeout_s, max_line_bytes=max_line_bytes)
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
