"""nnflash_agent.protocol: the wire format, pinned by golden fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnflash_agent import protocol as P

FIXTURES = Path(__file__).parent / "fixtures" / "protocol"


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


def test_version_is_two():
    assert P.PROTOCOL_VERSION == 2


def test_statuses_and_verbs_pinned():
    assert list(P.STATUSES) == load("statuses.json")
    assert list(P.VERBS) == load("verbs.json")


def test_make_request_matches_golden():
    golden = load("request_measure.json")
    built = P.make_request("measure", "r-17", golden["args"])
    assert built == golden
    assert P.make_request("hello", "h-1") == load("request_hello.json")


def test_encode_is_compact_single_line_golden():
    golden = load("request_measure.json")
    data = P.encode(P.make_request("measure", "r-17", golden["args"]))
    assert data == (FIXTURES / "encoded_request_measure.jsonl").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1


def test_make_response_golden():
    assert P.make_response("h-1", "ok", {"protocol": 2}) == load("response_ok.json")


def test_version_mismatch_golden_and_message_names_both_versions():
    msg = P.make_request("hello", "r-9")
    msg["v"] = 3
    with pytest.raises(P.ProtocolError) as ei:
        P.validate_request(msg)
    assert ei.value.status == P.VERSION_MISMATCH
    assert "v3" in ei.value.message and "v2" in ei.value.message
    assert P.error_response(ei.value) == load("response_version_mismatch.json")


def test_roundtrip():
    req = P.make_request("results", "x", {"ids": ["a", "b"]})
    assert P.decode(P.encode(req)) == req
    assert P.decode(P.encode(req).decode()) == req
    assert P.validate_request(P.decode(P.encode(req))) == ("results", "x", {"ids": ["a", "b"]})


@pytest.mark.parametrize(
    "line",
    [b"", b"not json", b"{", b"[1, 2]", b'"str"', b"42", b"null", b"\xff\xfe", b'{"a": NaN}'],
)
def test_decode_rejects_malformed(line):
    with pytest.raises(P.ProtocolError) as ei:
        P.decode(line)
    assert ei.value.status == P.BAD_JSON


def test_decode_rejects_overlong_line():
    with pytest.raises(P.ProtocolError) as ei:
        P.decode(b"{" + b" " * P.MAX_LINE_BYTES + b"}")
    assert ei.value.status == P.BAD_REQUEST


def test_decode_rejects_non_bytes():
    with pytest.raises(P.ProtocolError):
        P.decode(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "msg, status, has_id",
    [
        ({"v": 2, "verb": "hello"}, P.BAD_REQUEST, False),
        ({"v": 2, "id": 5, "verb": "hello"}, P.BAD_REQUEST, False),
        ({"v": 2, "id": "", "verb": "hello"}, P.BAD_REQUEST, False),
        ({"v": 2, "id": "x" * 201, "verb": "hello"}, P.BAD_REQUEST, False),
        ({"id": "a", "verb": "hello"}, P.BAD_REQUEST, True),
        ({"v": "1", "id": "a", "verb": "hello"}, P.BAD_REQUEST, True),
        ({"v": True, "id": "a", "verb": "hello"}, P.BAD_REQUEST, True),
        ({"v": 0, "id": "a", "verb": "hello"}, P.VERSION_MISMATCH, True),
        ({"v": 2, "id": "a"}, P.BAD_REQUEST, True),
        ({"v": 2, "id": "a", "verb": 3}, P.BAD_REQUEST, True),
        ({"v": 2, "id": "a", "verb": "explode"}, P.UNKNOWN_VERB, True),
        ({"v": 2, "id": "a", "verb": "hello", "args": [1]}, P.BAD_REQUEST, True),
        ({"v": 2, "id": "a", "verb": "hello", "extra": 1}, P.BAD_REQUEST, True),
        ([1, 2], P.BAD_REQUEST, False),
    ],
)
def test_validate_request_errors(msg, status, has_id):
    with pytest.raises(P.ProtocolError) as ei:
        P.validate_request(msg)
    assert ei.value.status == status
    assert (ei.value.id == "a") == has_id
    assert ei.value.message and "\n" not in ei.value.message


def test_args_default_to_empty_object():
    assert P.validate_request({"v": 2, "id": "a", "verb": "bye"}) == ("bye", "a", {})
    assert P.validate_request({"v": 2, "id": "a", "verb": "bye", "args": None})[2] == {}


def test_error_message_is_one_line():
    r = P.make_response("a", P.INTERNAL, None, "line one\nline two")
    assert r["error"] == "line one line two"


def test_encode_refuses_nan_but_json_safe_fixes_it():
    msg = P.make_response("a", "ok", {"x": float("nan"), "y": [float("inf"), 1.0], "z": (1, 2)})
    with pytest.raises(ValueError):
        P.encode(msg)
    safe = P.json_safe(msg)
    assert P.decode(P.encode(safe))["result"] == {"x": None, "y": [None, 1.0], "z": [1, 2]}
