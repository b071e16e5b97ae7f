"""Hostile input files on the host (issue 12, section 2), fuzzed with hypothesis.

Spec JSONL, cost-model JSON, accuracy-predictor JSON, the device inventory (TOML) and results
databases (random bytes, truncated, another application's, a newer schema) go through the real
commands (``predict``, ``accuracy predict``, ``devices list``, ``results``). Each either works
(a mutation may leave a file valid) or fails with exit code 2 and exactly one line
``nnflash: error: ...``: never a traceback, never another exit code. A database is never changed
by a command that refuses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from accuracy_fixture import fixture_specs_and_accuracy
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nnflash.calibration.accuracy import make_accuracy_model
from nnflash.controller.cli import cli
from nnflash.controller.store import SCHEMA_VERSION

LEGACY = Path(__file__).parent / "fixtures" / "legacy_0_1"
FUZZ = settings(
    max_examples=40,
    deadline=5000,  # ms per example (a CLI run on a loaded 2-core machine)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args), env=env)
    assert res.exit_code in (0, 2), f"exit {res.exit_code}: {res.exception!r:.500}\n{res.output[-1000:]}"
    if res.exit_code == 2:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nnflash: error: "), res.stderr[-2000:]
        assert "Traceback" not in res.output
    return res.exit_code, res.stdout, res.stderr


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (dict keys and list indices)."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw: Any, doc: Any, values: Any = json_values) -> Any:
    """``doc`` with one to three random edits: a value replaced, a key removed, a key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc)))
        if not where:
            return draw(values)
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent[where[-1]] = draw(values)
    return doc


def hostile_text(valid: str) -> Any:
    """Raw file contents: random bytes, invalid UTF-8, a valid file cut short, a deep nesting, a
    megabyte line, NaN tokens."""
    return st.one_of(
        st.binary(max_size=300),
        st.integers(1, max(1, len(valid) - 1)).map(lambda n: valid[:n].encode()),
        st.sampled_from(
            [
                b"\xff\xfe" + valid.encode("utf-16-le")[:200],
                valid.encode()[:50] + b"\xc3\x28" + valid.encode()[50:],
                b"[" * 100_000,
                b'{"a":' * 50_000,
                b"{" + b" " * (2 << 20) + b"}",
                b'{"format": NaN, "kind": Infinity}',
                b"1" * 5000,
                b"",
                b"\x00" * 100,
            ]
        ),
    )


# -- spec JSONL ------------------------------------------------------------------------------------

SPEC_LINES = (LEGACY / "specs.jsonl").read_text().splitlines()
COST = str(LEGACY / "cost-macs.json")


@FUZZ
@given(data=st.data())
def test_spec_jsonl(tmp_path: Path, data: Any) -> None:
    spec = json.loads(SPEC_LINES[0])
    kind = data.draw(st.sampled_from(["mutated", "raw"]))
    if kind == "mutated":
        line = json.dumps(data.draw(mutated(spec)), allow_nan=True)
        content = (SPEC_LINES[1] + "\n" + line + "\n").encode("utf-8", "surrogatepass")
    else:
        content = data.draw(hostile_text(SPEC_LINES[0]))
    f = tmp_path / "specs.jsonl"
    f.write_bytes(content)
    run("predict", "--cost", COST, str(f), "--json")


# -- cost model JSON -------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_cost_model_json(tmp_path: Path, data: Any) -> None:
    name = data.draw(st.sampled_from(["cost-macs.json", "cost-linear.json", "cost-roofline.json", "cost-energy.json"]))
    text = (LEGACY / name).read_text()
    if data.draw(st.booleans()):
        content = json.dumps(data.draw(mutated(json.loads(text))), allow_nan=True).encode("utf-8", "surrogatepass")
    else:
        content = data.draw(hostile_text(text))
    f = tmp_path / "cost.json"
    f.write_bytes(content)
    code, out, _ = run("predict", "--cost", str(f), str(LEGACY / "specs.jsonl"), "--json")
    if code == 0:  # whatever a valid-looking model predicts, it is a number per spec or an error
        rows = [json.loads(x) for x in out.splitlines()]
        assert len(rows) == len(SPEC_LINES)


# -- accuracy predictor JSON ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor_json() -> str:
    specs, y = fixture_specs_and_accuracy()
    return json.dumps(make_accuracy_model("flash").fit(specs, y).to_dict())


@FUZZ
@given(data=st.data())
def test_accuracy_predictor_json(tmp_path: Path, predictor_json: str, data: Any) -> None:
    if data.draw(st.booleans()):
        doc = data.draw(mutated(json.loads(predictor_json)))
        content = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    else:
        content = data.draw(hostile_text(predictor_json))
    f = tmp_path / "acc.json"
    f.write_bytes(content)
    specs = tmp_path / "s.jsonl"
    specs.write_text("\n".join(SPEC_LINES) + "\n")
    code, out, _ = run("accuracy", "predict", "--accuracy", str(f), str(specs), "--json")
    if code == 0:
        assert all(math.isfinite(json.loads(x)["accuracy"]) for x in out.splitlines())


# -- device inventory TOML --------------------------------------------------------------------------

toml_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(data=st.data())
def test_inventory_toml(tmp_path: Path, data: Any) -> None:
    text = (LEGACY / "devices.toml").read_text()
    if data.draw(st.booleans()):
        doc = data.draw(mutated(tomlkit.parse(text).unwrap(), toml_values))
        try:
            content = tomlkit.dumps(doc).encode("utf-8", "surrogatepass")
        except Exception:  # not representable in TOML (a list of mixed tables, say)
            assume(False)
    else:
        content = data.draw(hostile_text(text))
    f = tmp_path / "devices.toml"
    f.write_bytes(content)
    run("devices", "list", "--inventory", str(f), "--json")


# -- results databases ------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(db: Path) -> str:
    before = sha(db)
    code, _, err = run("results", "--db", str(db), "--json")
    assert code == 2
    assert sha(db) == before, "a refused database is left untouched"
    for suffix in ("-wal", "-journal"):
        assert not Path(str(db) + suffix).exists() or Path(str(db) + suffix).stat().st_size == 0
    return err


def test_database_from_a_newer_version(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    shutil.copyfile(LEGACY / "nnflash.db", db)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE from_the_future (x)")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    err = refused(db)
    assert "newer" in err and str(SCHEMA_VERSION + 1) in err
    code, _, err = run("profile", str(LEGACY / "specs.jsonl"), "--db", str(db), "--device", "local")
    assert code == 2 and "newer" in err


def test_database_of_another_application(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        con.execute("INSERT INTO accounts(owner) VALUES ('someone')")
    con.close()
    assert "another" in refused(db) or "no nnflash schema" in refused(db)


@FUZZ
@given(data=st.data())
def test_damaged_database(tmp_path: Path, data: Any) -> None:
    legacy = (LEGACY / "nnflash.db").read_bytes()
    kind = data.draw(st.sampled_from(["bytes", "cut", "flipped"]))
    if kind == "bytes":
        content = data.draw(st.binary(min_size=1, max_size=5000))
    elif kind == "cut":
        content = legacy[: data.draw(st.integers(1, len(legacy) - 1))]
    else:
        content = bytearray(legacy)
        for _ in range(data.draw(st.integers(1, 20))):
            content[data.draw(st.integers(0, len(content) - 1))] ^= 0xFF
        content = bytes(content)
    db = tmp_path / "damaged.db"
    db.write_bytes(content)
    before = sha(db)
    run("results", "--db", str(db), "--json")  # works (damage in unused pages) or exit 2, one line
    assert sha(db) == before
