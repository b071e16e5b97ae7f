"""The agent wire protocol: one JSON object per line over stdin/stdout (see docs/protocol.md).

Standard library only: imported by both the agent (on the device) and the controller (on the host).
Messages have named fields, never positional lists.

Request::

    {"v": 2, "id": "r-17", "verb": "measure", "args": {...}}

Response::

    {"v": 2, "id": "r-17", "status": "ok", "error": null, "result": {...}}
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "PROTOCOL_VERSION",
    "VERBS",
    "STATUSES",
    "OK",
    "BAD_JSON",
    "BAD_REQUEST",
    "UNKNOWN_VERB",
    "VERSION_MISMATCH",
    "MISSING_ARTIFACT",
    "CORRUPT_ARTIFACT",
    "RUNTIME_UNAVAILABLE",
    "RUNTIME_ERROR",
    "TIMEOUT",
    "CRASHED",
    "INTERNAL",
    "DISTURBED",
    "MAX_LINE_BYTES",
    "ProtocolError",
    "make_request",
    "make_response",
    "error_response",
    "encode",
    "decode",
    "validate_request",
    "json_safe",
]

PROTOCOL_VERSION = 2

# Status codes.
OK = "ok"
BAD_JSON = "bad_json"  # the line is not a JSON object
BAD_REQUEST = "bad_request"  # missing field, wrong type, bad value
UNKNOWN_VERB = "unknown_verb"
VERSION_MISMATCH = "version_mismatch"
MISSING_ARTIFACT = "missing_artifact"
CORRUPT_ARTIFACT = "corrupt_artifact"  # sha256 of the file does not match its name
RUNTIME_UNAVAILABLE = "runtime_unavailable"
RUNTIME_ERROR = "runtime_error"  # the runtime raised (e.g. refused to load the model)
TIMEOUT = "timeout"  # the measurement ran past timeout_s and was killed
CRASHED = "crashed"  # the isolated worker died (signal, OOM kill, abort)
INTERNAL = "internal"  # a bug in the agent; it keeps serving
# The measurement ran, but the device was not quiet enough to trust it (another process competed for
# the measuring CPUs, the hypervisor stole time, the SoC throttled or was under-voltage). Unlike the
# other failures the response carries the full record (figures, per-repeat flags), so the
# controller can store it and measure the model again later. New in protocol v2.
DISTURBED = "disturbed"

STATUSES = (
    OK,
    BAD_JSON,
    BAD_REQUEST,
    UNKNOWN_VERB,
    VERSION_MISMATCH,
    MISSING_ARTIFACT,
    CORRUPT_ARTIFACT,
    RUNTIME_UNAVAILABLE,
    RUNTIME_ERROR,
    TIMEOUT,
    CRASHED,
    INTERNAL,
    DISTURBED,
)

VERBS = ("hello", "info", "measure", "list", "results", "cleanup", "bye")

# A request line longer than this is refused (bad_request) without being parsed.
MAX_LINE_BYTES = 1 << 20


class ProtocolError(Exception):
    """A message that breaks the protocol. ``status`` is the code to answer with; ``id`` the request
    id when it could be read (else None)."""

    def __init__(self, status: str, message: str, id: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.id = id


def make_request(verb: str, id: str, args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Build a request object (the controller's side)."""
    return {"v": PROTOCOL_VERSION, "id": id, "verb": verb, "args": dict(args or {})}


def make_response(
    id: Optional[str],
    status: str = OK,
    result: Any = None,
    error: Optional[str] = None,
) -> Dict[str, Any]:
    """Build a response object. ``error`` is a one-line human message when ``status`` is not ok;
    ``result`` is null then, except for ``disturbed`` (the measurement record, see DISTURBED)."""
    if error is not None:
        error = " ".join(str(error).split())  # one line
    return {"v": PROTOCOL_VERSION, "id": id, "status": status, "error": error, "result": result}


def error_response(exc: ProtocolError, id: Optional[str] = None) -> Dict[str, Any]:
    """The response for a :class:`ProtocolError` (uses the id the error carries, else ``id``)."""
    return make_response(exc.id if exc.id is not None else id, exc.status, None, exc.message)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats (NaN, inf: not JSON) as None, tuples as lists."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def encode(msg: Dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8, terminated by one newline. NaN/Infinity are refused (not JSON).

    A string holding a lone surrogate (a request may carry ``"\\ud800"``, valid JSON that Python
    decodes to a string UTF-8 cannot encode) is written as its ``\\u`` escape, so every message
    encodes and the answer to a hostile request still reaches the peer."""
    text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(msg, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"


def decode(line: bytes | str) -> Dict[str, Any]:
    """Parse one line into a dict; raises :class:`ProtocolError` (``bad_json``) on malformed UTF-8,
    malformed JSON, or JSON that is not an object."""
    if isinstance(line, (bytes, bytearray)):
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError(BAD_REQUEST, f"line longer than {MAX_LINE_BYTES} bytes")
        try:
            text = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(BAD_JSON, f"not UTF-8: {exc}") from None
    elif isinstance(line, str):
        text = line
    else:
        raise ProtocolError(BAD_JSON, f"expected bytes or str, got {type(line).__name__}")
    try:
        msg = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_JSON, f"expected a JSON object, got {type(msg).__name__}")
    return msg


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def validate_request(msg: Any) -> Tuple[str, str, Dict[str, Any]]:
    """Check a decoded request and return ``(verb, id, args)``.

    Raises :class:`ProtocolError` with status ``bad_request`` (missing field / wrong type),
    ``version_mismatch`` (the message names both versions) or ``unknown_verb``. The error carries
    the request id whenever it could be read, so the caller can still answer to it.
    """
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, f"request must be an object, got {type(msg).__name__}")
    rid = msg.get("id")
    if "id" not in msg:
        raise ProtocolError(BAD_REQUEST, "missing field 'id'")
    if not isinstance(rid, str) or not rid:
        raise ProtocolError(BAD_REQUEST, "field 'id' must be a non-empty string")
    if len(rid) > 200:
        raise ProtocolError(BAD_REQUEST, "field 'id' longer than 200 characters")
    if not rid.isprintable():  # control characters, lone surrogates: not an id anyone can store
        raise ProtocolError(BAD_REQUEST, "field 'id' must be printable text")
    if "v" not in msg:
        raise ProtocolError(BAD_REQUEST, "missing field 'v' (protocol version)", rid)
    version = msg["v"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(BAD_REQUEST, "field 'v' must be an integer", rid)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            VERSION_MISMATCH,
            f"protocol version mismatch: request speaks v{version}, this agent speaks v{PROTOCOL_VERSION}",
            rid,
        )
    if "verb" not in msg:
        raise ProtocolError(BAD_REQUEST, "missing field 'verb'", rid)
    verb = msg["verb"]
    if not isinstance(verb, str):
        raise ProtocolError(BAD_REQUEST, "field 'verb' must be a string", rid)
    if verb not in VERBS:
        raise ProtocolError(UNKNOWN_VERB, f"unknown verb {verb[:50]!r} (known: {', '.join(VERBS)})", rid)
    args = msg.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(BAD_REQUEST, "field 'args' must be an object", rid)
    unknown = sorted(set(msg) - {"v", "id", "verb", "args"})
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"unknown field(s) {', '.join(unknown)}", rid)
    return verb, rid, args
