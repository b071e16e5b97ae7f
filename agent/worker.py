"""The isolated measurement worker: ``python -m agent.worker``.

Reads one job (a JSON object) on stdin, runs :func:`agent.measure.run_measurement`, writes one
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

from agent.protocol import CRASHED, INTERNAL, OK, TIMEOUT, json_safe

__all__ = ["run_isolated", "run_job", "main"]

STDERR_TAIL = 2000


def _worker_command() -> List[str]:
    """``python -c <bootstrap>``: import the same ``agent`` package as this process. The package's
    parent directory is put on ``sys.path`` only when it is not there already (a source checkout), so
    an installed agent never gets site-packages moved ahead of the standard library."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    boot = (
        "import sys\n"
        f"p = {pkg_parent!r}\n"
        "sys.path[:] = [x for x in sys.path if x != '']\n"
        "if p not in sys.path: sys.path.insert(0, p)\n"
        "from agent.worker import main\n"
        "sys.exit(main())\n"
    )
    return [sys.executable, "-c", boot]


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
    from agent.measure import MeasurementFailed, run_measurement

    try:
        result = run_measurement(job["model_path"], job["runtime"], job["options"])
        return {"status": OK, "error": None, "result": result}
    except MeasurementFailed as exc:
        return {"status": exc.status, "error": exc.message, "result": None}
    except Exception as exc:  # a bug: report it, never die silently
        return {"status": INTERNAL, "error": f"{type(exc).__name__}: {exc}", "result": None}


def run_isolated(job: Dict[str, Any], timeout_s: float) -> Tuple[str, Optional[str], Any]:
    """Run a job in a fresh worker process; returns ``(status, error, result)``."""
    payload = json.dumps(job).encode("utf-8")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",  # nothing in the caller's directory can shadow a module
            start_new_session=True,  # our terminal's signals are not the child's; killpg reaches all
        )
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


def main() -> int:
    # Keep the real stdout for the answer; everything else written to fd 1 goes to stderr.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
