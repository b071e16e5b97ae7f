"""The isolated measurement worker: ``python -m nnflash_agent.worker``.

Reads one job (a JSON object) on stdin, runs :func:`nnflash_agent.measure.run_measurement`, writes one
JSON object ``{"status", "error", "result"}`` on its stdout and exits 0. Anything a runtime prints
to fd 1 is redirected to stderr first, so stdout carries only the answer.

The parent (:func:`run_isolated`) turns every way the child can end into a status: a clean answer,
``timeout`` (killed after ``timeout_s``), ``crashed`` (killed by a signal - SIGKILL is typically the
OOM killer - or exited without an answer). The serving process never loads a runtime itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from nnflash_agent.protocol import CRASHED, DISTURBED, INTERNAL, OK, TIMEOUT, json_safe

__all__ = ["run_isolated", "run_job", "main"]

STDERR_TAIL = 2000


def _worker_command(preload: Optional[str] = None) -> List[str]:
    """``python -c <bootstrap>``: import the same ``nnflash_agent`` package as this process. The package's
    parent directory is put on ``sys.path`` only when it is not there already (a source checkout), so
    an installed agent never gets site-packages moved ahead of the standard library."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    boot = (
        "import sys\n"
        f"p = {pkg_parent!r}\n"
        "sys.path[:] = [x for x in sys.path if x != '']\n"
        "if p not in sys.path: sys.path.insert(0, p)\n"
        "from nnflash_agent.worker import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", boot] + ([preload] if preload else [])


def _forward_stderr(data: bytes) -> None:
    """The worker's own log lines (runtime chatter) go to the agent's stderr, for humans."""
    if not data:
        return
    try:
        sys.stderr.write(data.decode("utf-8", "replace"))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    tail = " | ".join(lines[-5:])
    return tail[-STDERR_TAIL:]


def _spawn(preload: Optional[str] = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _worker_command(preload),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",  # nothing in the caller's directory can shadow a module
        start_new_session=True,  # our terminal's signals are not the child's; killpg reaches all
    )


class WorkerPool:
    """Hands out worker processes, one job each.

    With ``prespawn``, :meth:`refill` (called after a response has been sent, when the device is
    otherwise idle) starts a spare worker that imports numpy and the last runtime ahead of time and
    then waits for its job, so the next measurement does not wait for Python's start-up (seconds on
    a Raspberry Pi). Isolation is unchanged: every measurement still gets a process of its own. The
    spare costs memory while idle (the runtime is loaded in it), so it is off by default.
    """

    def __init__(self, prespawn: bool = False) -> None:
        self.prespawn = prespawn
        self._spare: Optional[subprocess.Popen[bytes]] = None

    def take(self) -> subprocess.Popen[bytes]:
        spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None:
            return spare
        if spare is not None:
            _reap(spare)
        return _spawn()

    def refill(self, runtime: Optional[str]) -> None:
        if not self.prespawn or (self._spare is not None and self._spare.poll() is None):
            return
        try:
            self._spare = _spawn(runtime)
        except OSError:
            self._spare = None

    def spare_pid(self) -> Optional[int]:
        return self._spare.pid if self._spare is not None else None

    def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            _kill_group(spare)
            _reap(spare)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass


def _preload(runtime: str) -> None:
    """Import what a measurement with ``runtime`` will need (best effort, errors surface later)."""
    try:
        import numpy  # noqa: F401

        from nnflash_agent.runners import make_runner

        make_runner(runtime).import_runtime()
    except Exception:
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass


def run_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run one job in this process; always returns ``{"status", "error", "result"}``."""
    from nnflash_agent.measure import MeasurementFailed, run_measurement

    try:
        result = run_measurement(job["model_path"], job["runtime"], job["options"])
        reason = (result.get("disturbance") or {}).get("reason")
        if reason:  # the figures travel with the status: the controller stores them
            return {"status": DISTURBED, "error": f"disturbed measurement: {reason}", "result": result}
        return {"status": OK, "error": None, "result": result}
    except MeasurementFailed as exc:
        return {"status": exc.status, "error": exc.message, "result": None}
    except Exception as exc:  # a bug: report it, never die silently
        return {"status": INTERNAL, "error": f"{type(exc).__name__}: {exc}", "result": None}


def run_isolated(
    job: Dict[str, Any], timeout_s: float, pool: Optional[WorkerPool] = None
) -> Tuple[str, Optional[str], Any]:
    """Run a job in a fresh worker process (from ``pool`` when given); returns
    ``(status, error, result)``."""
    payload = json.dumps(job).encode("utf-8")
    started = time.monotonic()
    try:
        proc = pool.take() if pool is not None else _spawn()
    except OSError as exc:
        return INTERNAL, f"cannot start the measurement worker: {exc}", None
    try:
        out, err = proc.communicate(payload, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        _forward_stderr(err)
        return TIMEOUT, f"measurement killed after timeout_s={timeout_s:g} s", None
    except BaseException:  # interrupted (SIGINT/SIGTERM/SIGHUP in the agent): take the child along
        _kill_group(proc)
        proc.wait()
        raise
    _forward_stderr(err)
    rc = proc.returncode
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (out of memory? the OOM killer sends SIGKILL)" if -rc == signal.SIGKILL else ""
        detail = _tail(err)
        return (
            CRASHED,
            f"measurement worker killed by {name}{hint}" + (f"; stderr: {detail}" if detail else ""),
            None,
        )
    try:
        answer = json.loads(out.decode("utf-8"))
        status, error, result = answer["status"], answer.get("error"), answer.get("result")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        detail = _tail(err)
        return (
            CRASHED,
            f"measurement worker exited with code {rc} after "
            f"{time.monotonic() - started:.1f} s without an answer" + (f"; stderr: {detail}" if detail else ""),
            None,
        )
    if isinstance(result, dict):
        result["isolated"] = True
    return status, error, result


def main(argv: Optional[List[str]] = None) -> int:
    # Keep the real stdout for the answer; everything else written to fd 1 goes to stderr.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if argv:
        _preload(argv[0])
    try:
        job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        answer = run_job(job)
    except Exception as exc:
        answer = {
            "status": INTERNAL,
            "error": f"worker: {type(exc).__name__}: {exc}",
            "result": None,
        }
    data = json.dumps(json_safe(answer), allow_nan=False).encode("utf-8")
    with os.fdopen(answer_fd, "wb") as f:
        f.write(data)
        f.flush()
    # The answer is out: skip interpreter and runtime teardown (it can take a noticeable time with a
    # runtime loaded, and the parent waits for this process to end).
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
