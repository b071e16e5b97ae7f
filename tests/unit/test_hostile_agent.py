"""Hostile input to the agent's protocol (issue 12, section 2), property-based with hypothesis.

Whatever a line holds (arbitrary bytes, invalid UTF-8, megabytes, deep nesting, NaN and huge
numbers, missing and extra fields, every verb with arguments of the wrong type), the agent answers
it with exactly one error response that encodes as a protocol line, never ``internal`` (that would
be a bug the fuzzing found), and keeps serving. The examples are bounded and each has a deadline,
so the file runs in a few seconds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnflash_agent import protocol as P
from nnflash_agent.serve import Agent, serve

REPO_ROOT = Path(__file__).resolve().parents[2]
V = P.PROTOCOL_VERSION
# The statuses a refused request may get (anything but ok and internal).
REFUSALS = {P.BAD_JSON, P.BAD_REQUEST, P.UNKNOWN_VERB, P.VERSION_MISMATCH, P.MISSING_ARTIFACT}

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a slow one is a finding too
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples in CI every time
)

# JSON values, including what JSON cannot carry (NaN, infinities) and numbers past float range.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# any code point, lone surrogates and control characters included
any_text = st.text(st.characters(exclude_categories=()), min_size=1, max_size=30)
# Argument names each verb knows, plus measure's options: wrong types for the right names are the
# interesting cases.
ARG_NAMES = [
    "ids",
    "sha256",
    "artifact",
    "runtime",
    "threads",
    "repeat",
    "number",
    "min_repeat_ms",
    "warmup_runs",
    "warmup_s",
    "timeout_s",
    "energy",
    "energy_options",
    "affinity",
    "isolate",
    "seed",
    "fixed_runs",
    "thermal_gate_c",
    "_test_fault",
]


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(str(tmp_path / "store"), str(tmp_path / "journal.jsonl"), allow_test_hooks=False)


def dumps(value: Any) -> bytes:
    """JSON as a careless or hostile client writes it: NaN/Infinity tokens, raw non-UTF-8 text."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def check_refusal(agent: Agent, line: bytes) -> dict:
    """``line`` gets one error response that is a valid protocol line; the agent still answers."""
    response, stop = agent.handle_line(line)
    assert not stop
    assert response["status"] in REFUSALS, response
    assert isinstance(response["error"], str) and response["error"] and "\n" not in response["error"]
    assert response["result"] is None
    wire = P.encode(response)  # what serve writes: must be one UTF-8 line
    assert wire.count(b"\n") == 1 and wire.endswith(b"\n")
    assert P.decode(wire[:-1]) == json.loads(wire.decode("utf-8"))
    return response


def still_serving(agent: Agent) -> None:
    response, _ = agent.handle_line(P.encode(P.make_request("list", "alive")))
    assert response["status"] == P.OK and response["id"] == "alive"


@FUZZ
@given(line=st.binary(max_size=300))
def test_arbitrary_bytes(agent: Agent, line: bytes) -> None:
    check_refusal(agent, line)
    still_serving(agent)


@FUZZ
@given(
    prefix=st.binary(max_size=20),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]),
)
def test_invalid_utf8_inside_a_request(agent: Agent, prefix: bytes, bad: bytes) -> None:
    line = b'{"v":%d,"id":"' % V + prefix.replace(b'"', b"") + bad + b'","verb":"hello"}'
    assert check_refusal(agent, line)["status"] == P.BAD_JSON
    still_serving(agent)


@FUZZ
@given(msg=st.dictionaries(st.sampled_from(["v", "id", "verb", "args", "x", ""]), json_values, max_size=6))
def test_requests_with_missing_extra_and_mistyped_fields(agent: Agent, msg: dict) -> None:
    if msg.get("verb") in P.VERBS and msg.get("v") == V and isinstance(msg.get("id"), str) and msg["id"]:
        msg["x"] = 1  # keep it invalid: an unknown field
    check_refusal(agent, dumps(msg))
    still_serving(agent)


@FUZZ
@given(
    verb=st.sampled_from(P.VERBS),
    args=st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=8), json_values, min_size=1, max_size=5),
    rid=any_text,
)
def test_every_verb_with_wrong_arguments(agent: Agent, verb: str, args: dict, rid: str) -> None:
    """Random arguments: mostly refused; the few valid ones (``results`` for some ids, ``cleanup`` of
    nothing) answer ok; none is an internal error or an unencodable answer."""
    response, stop = agent.handle_line(dumps(P.make_request(verb, rid, args)))
    assert response["status"] in REFUSALS | {P.OK}, response
    assert response["status"] != P.OK or verb in ("results", "cleanup", "bye")
    assert not stop or verb == "bye"
    P.encode(response)
    still_serving(agent)


@FUZZ
@given(rid=any_text)
def test_any_id_text_gets_an_encodable_answer(agent: Agent, rid: str) -> None:
    """Ids with control characters or lone surrogates (``"\\ud800"`` is valid JSON): answered, and
    the answer is valid UTF-8 JSON."""
    line = json.dumps({"v": V, "id": rid, "verb": "hello", "args": {"x": 1}}).encode("ascii")
    response, _ = agent.handle_line(line)
    assert response["status"] == P.BAD_REQUEST
    wire = P.encode(response)
    assert json.loads(wire.decode("utf-8"))["status"] == P.BAD_REQUEST


@FUZZ
@given(
    name=st.sampled_from(["repeat", "number", "timeout_s", "warmup_s", "min_repeat_ms", "threads", "seed"]),
    token=st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 5000, "1e-400", "-0"]),
)
def test_nan_and_huge_numbers(agent: Agent, name: str, token: str) -> None:
    art = '{"sha256":"%s","format":"onnx"}' % ("a" * 64)
    line = '{"v":%d,"id":"n","verb":"measure","args":{"artifact":%s,"runtime":"onnxruntime","%s":%s}}'
    response = check_refusal(agent, (line % (V, art, name, token)).encode())
    # a number the agent accepts (1e-400 is 0.0, -0 is 0) reaches the store: the artifact is missing
    assert response["status"] in (P.BAD_JSON, P.BAD_REQUEST, P.MISSING_ARTIFACT)
    still_serving(agent)


@pytest.mark.parametrize("depth", [50, 1_000, 100_000])
@pytest.mark.parametrize("where", ["top", "args", "id"])
def test_deeply_nested_json(agent: Agent, depth: int, where: str) -> None:
    nested = "[" * depth + "]" * depth
    if where == "top":
        line = nested
    elif where == "args":
        line = f'{{"v":{V},"id":"d","verb":"results","args":{{"ids":{nested}}}}}'
    else:
        line = f'{{"v":{V},"id":{nested},"verb":"hello"}}'
    check_refusal(agent, line.encode())
    still_serving(agent)


def test_megabyte_lines_through_the_serve_loop(agent: Agent) -> None:
    """Lines of several megabytes (with and without a newline in reach) are refused, each with one
    answer, and the loop goes on to the next request."""
    huge_string = b'{"v":%d,"id":"big","verb":"hello","args":{"p":"' % V + b"x" * (3 * P.MAX_LINE_BYTES) + b'"}}\n'
    just_over = b"[" + b" " * P.MAX_LINE_BYTES + b"]\n"
    just_under = b'{"v":%d,"id":"u","verb":"list","args":{}}' % V
    just_under = just_under[:-1] + b" " * (P.MAX_LINE_BYTES - len(just_under) - 1) + b"}\n"
    stream = huge_string + just_over + just_under + b"\xff" * 5000 + b"\n" + P.encode(P.make_request("bye", "end"))
    out = io.BytesIO()
    assert serve(agent, io.BytesIO(stream), out, close_agent=False) == 0
    answers = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [a["status"] for a in answers] == [P.BAD_REQUEST, P.BAD_REQUEST, P.OK, P.BAD_JSON, P.OK]
    assert answers[2]["id"] == "u" and answers[-1]["id"] == "end"


@settings(max_examples=25, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(lines=st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=20))
def test_serve_answers_every_line_of_a_garbage_stream(agent: Agent, lines: list) -> None:
    """A stream of garbage lines, then a real request: one answer per non-blank line, in order."""
    stream = b"\n".join(lines) + b"\n" + P.encode(P.make_request("hello", "last"))
    out = io.BytesIO()
    serve(agent, io.BytesIO(stream), out, close_agent=False)
    answers = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(answers) == sum(1 for x in lines if x.strip()) + 1
    assert answers[-1]["id"] == "last" and answers[-1]["status"] == P.OK


def test_real_agent_process_survives_a_hostile_stream(tmp_path: Path) -> None:
    """The same through ``nnflash-agent serve``'s stdio: every hostile line answered, then hello."""
    hostile = [
        b"\x00\x01\x02",
        b"\xff\xfe",
        b"[" * 200_000,
        b'{"v":%d,"id":"\\ud800","verb":"hello"}' % V,
        b'{"v":%d,"id":"s","verb":"hello","args":{"\\udfff":1}}' % V,
        b'{"v":NaN,"id":"n","verb":"hello"}',
        b"x" * (P.MAX_LINE_BYTES + 100),
        b'{"v":%d,"id":"m","verb":"measure","args":{"artifact":{"sha256":"../../etc/passwd","format":"onnx"},'
        b'"runtime":"onnxruntime"}}' % V,
        b'{"v":%d,"id":"e","verb":"exec","args":{"cmd":"touch %s"}}' % (V, str(tmp_path / "pwned").encode()),
    ]
    stream = b"\n".join(hostile) + b"\n" + P.encode(P.make_request("hello", "last"))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "nnflash_agent.cli", "serve", "--store", str(tmp_path / "s")]
        + ["--journal", str(tmp_path / "j.jsonl")],
        input=stream,
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [json.loads(x) for x in proc.stdout.decode("utf-8").splitlines()]
    assert len(answers) == len(hostile) + 1
    assert all(a["status"] in REFUSALS for a in answers[:-1]), answers
    assert answers[-1]["status"] == P.OK and answers[-1]["id"] == "last"
    assert answers[-2]["status"] == P.UNKNOWN_VERB and not (tmp_path / "pwned").exists()


def test_damaged_journal_still_answers(agent: Agent) -> None:
    """A journal with torn, binary, deeply nested and wrongly shaped lines: ``results`` still finds
    the whole entries and answers None for the rest."""
    good = {"id": "g", "time_unix": 1.0, "response": P.make_response("g", P.TIMEOUT, None, "slow")}
    os.makedirs(os.path.dirname(agent.journal.path), exist_ok=True)
    with open(agent.journal.path, "wb") as f:
        f.write(b'{"id":"torn","time_unix":1.0,"resp')
        f.write(b"\n\xff\xfe\x00garbage\n" + b"[" * 100_000 + b"\n[1,2]\n" + b'{"id":["x"]}\n')
        f.write(json.dumps(good).encode() + b"\n" + b'{"id":"cut-at-end","resp')
    response, _ = agent.handle_line(P.encode(P.make_request("results", "q", {"ids": ["g", "torn", "x"]})))
    assert response["status"] == P.OK, response
    assert response["result"]["results"] == {"g": good["response"], "torn": None, "x": None}
    agent.journal.append("next", P.make_response("next", P.TIMEOUT, None, "slow"))  # starts a fresh line
    assert agent.journal.lookup(["next"])["next"]["status"] == P.TIMEOUT
