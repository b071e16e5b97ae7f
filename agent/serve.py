"""``nnflash-agent serve``: the JSON-lines loop on stdin/stdout (docs/protocol.md).

stdout carries only protocol lines: at start the real stdout is kept on a private descriptor and
fd 1 is pointed at stderr, so whatever a library prints (Python or C level) lands on stderr. Each
response is flushed as soon as it is written. No request can stop the loop except ``bye`` or end
of input: malformed lines, bad requests, missing or corrupt artifacts, runtime failures, crashes
and hangs of the measurement worker all become error responses.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Dict, Optional, Tuple

from nnflash_agent import __version__
from nnflash_agent.protocol import (
    BAD_REQUEST,
    INTERNAL,
    MAX_LINE_BYTES,
    OK,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    error_response,
    json_safe,
    make_response,
    validate_request,
)

__all__ = ["Agent", "serve", "TEST_HOOKS_ENV", "install_stop_signals"]

# Set to "1" to let measure accept ``_test_fault`` (tests only: makes the worker crash or hang, or,
# with "kill_in_journal", the agent die halfway through writing the result to its journal).
TEST_HOOKS_ENV = "NNFLASH_AGENT_TEST_HOOKS"
KILL_IN_JOURNAL = "kill_in_journal"
MAX_IDS = 10_000


def _log(msg: str) -> None:
    try:
        sys.stderr.write(f"nnflash-agent: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Agent:
    """Dispatches requests. Holds no runtime: measurements run in a worker process by default."""

    def __init__(
        self,
        store_dir: str,
        journal_path: str,
        telemetry: Optional[Any] = None,
        allow_test_hooks: Optional[bool] = None,
        prespawn: bool = False,
    ) -> None:
        from nnflash_agent.journal import Journal
        from nnflash_agent.store import ArtifactStore
        from nnflash_agent.worker import WorkerPool

        self.store = ArtifactStore(store_dir)
        self.store.ensure()
        self.journal = Journal(journal_path)
        self._telemetry = telemetry
        self._facts: Optional[Dict[str, Any]] = None
        if allow_test_hooks is None:
            allow_test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1"
        self.allow_test_hooks = allow_test_hooks
        self.pool = WorkerPool(prespawn=prespawn)
        self._last_runtime: Optional[str] = None
        self._refill = False
        self._trim = False

    @property
    def telemetry(self) -> Any:
        if self._telemetry is None:
            from nnflash_agent.telemetry import Telemetry

            self._telemetry = Telemetry()
        return self._telemetry

    def facts(self) -> Dict[str, Any]:
        if self._facts is None:
            self._facts = self.telemetry.facts()
        return self._facts

    # -- one line -> one response ------------------------------------------------------------------

    def handle_line(self, line: bytes) -> Tuple[Dict[str, Any], bool]:
        """The response to one request line, and whether to stop serving after sending it."""
        rid: Optional[str] = None
        try:
            msg = decode(line)
            raw_id = msg.get("id")
            rid = raw_id if isinstance(raw_id, str) else None
            verb, rid, args = validate_request(msg)
            result = self.dispatch(verb, rid, args)
            if verb == "measure":
                return result, False  # already a full response (journaled)
            return make_response(rid, OK, result), verb == "bye"
        except ProtocolError as exc:
            return error_response(exc, rid), False
        except Exception as exc:  # a bug in the agent: answer and keep serving
            _log(f"internal error: {type(exc).__name__}: {exc}")
            return make_response(rid, INTERNAL, None, f"{type(exc).__name__}: {exc}"), False

    def dispatch(self, verb: str, rid: str, args: Dict[str, Any]) -> Any:
        if verb == "hello":
            _no_args(args)
            return {
                "protocol": PROTOCOL_VERSION,
                "agent_version": __version__,
                "store_dir": self.store.root,
                "journal": self.journal.path,
                "pid": os.getpid(),
                "facts": self.facts(),
            }
        if verb == "info":
            _no_args(args)
            return {"facts": self.facts(), "state": self.telemetry.state()}
        if verb == "list":
            _no_args(args)
            return {"artifacts": self.store.list()}
        if verb == "results":
            ids = args.get("ids")
            _only(args, {"ids"})
            if not isinstance(ids, list) or len(ids) > MAX_IDS or not all(isinstance(i, str) for i in ids):
                raise ProtocolError(BAD_REQUEST, f"'ids' must be a list of at most {MAX_IDS} strings")
            return {"results": self.journal.lookup(ids)}
        if verb == "cleanup":
            _only(args, {"sha256"})
            shas = args.get("sha256")
            if shas is not None and (not isinstance(shas, list) or not all(isinstance(s, str) for s in shas)):
                raise ProtocolError(BAD_REQUEST, "'sha256' must be a list of strings")
            return {"removed": self.store.remove(shas)}
        if verb == "bye":
            return {"bye": True}
        if verb == "measure":
            return self.measure(rid, args)
        raise ProtocolError(BAD_REQUEST, f"verb {verb!r} not handled")  # unreachable

    def measure(self, rid: str, args: Dict[str, Any]) -> Dict[str, Any]:
        """Validate, run (isolated by default), journal (fsync), return the full response."""
        from nnflash_agent.measure import parse_options
        from nnflash_agent.runners import RUNTIME_FORMATS, RUNTIMES
        from nnflash_agent.store import check_artifact_ref

        if "artifact" not in args:
            raise ProtocolError(BAD_REQUEST, "measure: missing argument 'artifact'", rid)
        if "runtime" not in args:
            raise ProtocolError(BAD_REQUEST, "measure: missing argument 'runtime'", rid)
        ref = check_artifact_ref(args["artifact"])
        runtime = args["runtime"]
        if runtime not in RUNTIMES:
            raise ProtocolError(BAD_REQUEST, f"'runtime' must be one of {', '.join(RUNTIMES)}", rid)
        if RUNTIME_FORMATS[runtime] != ref["format"]:
            raise ProtocolError(BAD_REQUEST, f"runtime {runtime} cannot run a .{ref['format']} artifact", rid)
        raw = {k: v for k, v in args.items() if k not in ("artifact", "runtime")}
        die_in_journal = self.allow_test_hooks and raw.get("_test_fault") == KILL_IN_JOURNAL
        if die_in_journal:
            del raw["_test_fault"]
        opts = parse_options(raw, allow_test_hooks=self.allow_test_hooks)
        try:
            path = self.store.verified_path(ref["sha256"], ref["format"])
        except ProtocolError as exc:
            response = error_response(exc, rid)
        else:
            response = self.run_measure(rid, path, runtime, ref, opts)
        if die_in_journal:
            _die_mid_journal_write(self.journal, rid, response)
        self._journal(rid, response)
        return response

    def run_measure(
        self, rid: str, path: str, runtime: str, ref: Dict[str, str], opts: Dict[str, Any]
    ) -> Dict[str, Any]:
        from nnflash_agent.worker import run_isolated, run_job

        job = {"model_path": path, "runtime": runtime, "options": opts}
        t0 = time.monotonic()
        if opts["isolate"]:
            status, error, result = run_isolated(job, opts["timeout_s"], self.pool)
            self._last_runtime, self._refill = runtime, True
        else:
            answer = run_job(job)
            status, error, result = answer["status"], answer["error"], answer["result"]
            if isinstance(result, dict):
                result["isolated"] = False
            self._trim = True
        if isinstance(result, dict):
            result["artifact"] = ref
            result["wall_s"] = time.monotonic() - t0
        return make_response(rid, status, json_safe(result), error)

    def after_response(self) -> None:
        """Called once a response is on its way: the idle moment to start a spare worker, or to
        give back the memory an in-process measurement freed."""
        if self._trim:
            self._trim = False
            release_freed_memory()
        if self._refill:
            self._refill = False
            self.pool.refill(self._last_runtime)

    def close(self) -> None:
        self.pool.close()

    def _journal(self, rid: str, response: Dict[str, Any]) -> None:
        try:
            self.journal.append(rid, response)
        except OSError as exc:
            _log(f"cannot write the journal {self.journal.path}: {exc}")
            result = response.get("result")
            if isinstance(result, dict):
                result.setdefault("flags", []).append("not_journaled")


def _die_mid_journal_write(journal: Any, rid: str, response: Dict[str, Any]) -> None:
    """Test hook: write the first half of the journal line (fsynced, as a power cut or a SIGKILL
    between two writes leaves it), then die by SIGKILL. The journal must skip the torn line and a
    later append must start on a fresh line."""
    import signal

    data = journal.entry(rid, response)
    os.makedirs(os.path.dirname(journal.path), exist_ok=True)
    fd = os.open(journal.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, data[: len(data) // 2])
    os.fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``; nothing elsewhere). An in-process measurement frees its session, but glibc
    keeps freed pages resident until trimmed (1-4 MB after the small models measured here; a
    large model's buffers are larger); the idle agent should not carry them."""
    import gc

    gc.collect()
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except (OSError, AttributeError):  # not glibc, or no dynamic loader access: nothing to do
        pass


def _no_args(args: Dict[str, Any]) -> None:
    _only(args, set())


def _only(args: Dict[str, Any], allowed: set) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise ProtocolError(BAD_REQUEST, f"unknown argument(s): {', '.join(extra)}")


def _read_line(stream: IO[bytes]) -> Optional[bytes]:
    """One line (without limit abuse): None at end of input; an over-long line is drained and
    returned truncated (it then fails to decode as bad_request)."""
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        while True:  # drain the rest of the line
            more = stream.readline(MAX_LINE_BYTES)
            if not more or more.endswith(b"\n"):
                break
    return line


def serve(
    agent: Agent, stdin: Optional[IO[bytes]] = None, out: Optional[IO[bytes]] = None, *, close_agent: bool = True
) -> int:
    """Serve until ``bye`` or end of input. With no streams given, use the process's stdio and
    redirect fd 1 to stderr so stray output cannot corrupt the protocol stream. ``close_agent=False``
    keeps the agent (and its spare worker) for the next session (the socket daemon)."""
    if out is None:
        out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        install_stop_signals()
    if stdin is None:
        stdin = sys.stdin.buffer
    _log(f"serving (protocol v{PROTOCOL_VERSION}, store {agent.store.root})")
    try:
        while True:
            line = _read_line(stdin)
            if line is None:
                return 0
            if not line.strip():
                continue
            response, stop = agent.handle_line(line)
            try:
                data = encode(response)
            except (TypeError, ValueError) as exc:
                rid = response.get("id")
                data = encode(make_response(rid, INTERNAL, None, f"unencodable: {exc}"))
            try:
                out.write(data)
                out.flush()
            except (BrokenPipeError, OSError):
                return 0
            if stop:
                return 0
            agent.after_response()
    except KeyboardInterrupt:  # SIGINT, or SIGTERM/SIGHUP via _install_stop_signals
        _log("stopped by a signal")
        return 130
    finally:
        if close_agent:
            agent.close()


def install_stop_signals() -> None:
    """SIGTERM and SIGHUP (the SSH session went away) stop the agent like Ctrl-C, so a running
    worker is killed on the way out instead of being left behind."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, stop)
