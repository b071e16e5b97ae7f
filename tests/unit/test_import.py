"""`nnflash import latency|accuracy`: good tables end to end (calibrate --from-db, accuracy fit), bad
rows refused with their line numbers and nothing stored, sources never mixed, old databases."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnflash.controller.cli import cli
from nnflash.controller.store import ResultsDB
from nnflash.models.nb201 import OPS, arch_string
from nnflash.models.spec import parse_spec


def _archs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[arch_string([rng.choice(OPS[1:]) for _ in range(6)])] = None  # no none: every cell has a path
    return list(out)


def _latency(arch: str) -> float:
    # an analytic stand-in for a device: the table's contents are data, not a measurement claim
    return 2.0 + 9.0 * arch.count("nor_conv_3x3") + 1.5 * arch.count("nor_conv_1x1") + 0.4 * arch.count("pool")


def _write(path: Path, rows: list[list[str]], header: str = "index,arch,lat,acc") -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def _good_table(tmp_path: Path, n: int = 30) -> Path:
    rows = [
        [str(i), a, f"{_latency(a):.4f}", f"{80 + a.count('nor_conv_3x3') * 2.5:.3f}"] for i, a in enumerate(_archs(n))
    ]
    return _write(tmp_path / "table.csv", rows)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def _lat_args(table: Path, db: Path, device: str = "pi4-ext") -> list[str]:
    return ["import", "latency", str(table), "--device", device, "--runtime", "tflite", "--arch-column", "arch",
            "--latency-column", "lat", "--db", str(db)]  # fmt: skip


def _acc_args(table: Path, db: Path, *extra: str) -> list[str]:
    return ["import", "accuracy", str(table), "--dataset", "cifar10", "--protocol", "ext-200ep", "--arch-column",
            "arch", "--accuracy-column", "acc", "--db", str(db), *extra]  # fmt: skip


def test_latency_import_then_calibrate_from_db(tmp_path: Path) -> None:
    table, db = _good_table(tmp_path), tmp_path / "x.db"
    code, out = run(*_lat_args(table, db))
    assert code == 0 and "30 latencies stored for pi4-ext" in out
    with ResultsDB(db) as store:
        rows = store.measurements(device="pi4-ext", status="ok")
        assert len(rows) == 30 and store.measurement_sources("pi4-ext", "tflite") == ["external"]
        spec = parse_spec(store.get_spec(rows[0]["spec_id"])["json"])
        assert spec.family == "nb201"
    code, out = run(*_lat_args(table, db))  # rerunning the same table changes nothing
    assert code == 0 and "30 already stored" in out
    code, out = run("calibrate", "--device", "pi4-ext", "--runtime", "tflite", "--from-db", "--db", str(db),
                    "--model", "linear", "--out", str(tmp_path / "m.json"), "--json")  # fmt: skip
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["measured"] == 30
    assert json.loads((tmp_path / "m.json").read_text())["metadata"]["space"] == "nb201"


def test_accuracy_import_percent_then_fit(tmp_path: Path) -> None:
    table, db = _good_table(tmp_path), tmp_path / "x.db"
    code, out = run(*_acc_args(table, db))
    assert code == 0 and "read as percent" in out and "30 test accuracies" in out
    with ResultsDB(db) as store:
        vals = [r["test_accuracy"] for r in store.trainings(dataset="cifar10")]
        assert len(vals) == 30 and all(0.8 <= v <= 0.96 for v in vals)
        assert all(r["val_accuracy"] is None for r in store.trainings(dataset="cifar10"))
    fit = ["accuracy", "fit", "--dataset", "cifar10", "--protocol", "ext-200ep", "--kind", "flash", "--db", str(db),
           "--out", str(tmp_path / "acc.json")]  # fmt: skip
    code, out = run(*fit)
    assert code == 2 and "no val accuracy" in out and "--target test" in out
    code, out = run(*fit, "--target", "test")
    assert code == 0 and "30 trained specs" in out


def test_accuracy_fraction_said_once(tmp_path: Path) -> None:
    rows = [[str(i), a, "0", f"{0.8 + i / 1000:.3f}"] for i, a in enumerate(_archs(5))]
    code, out = run(*_acc_args(_write(tmp_path / "t.csv", rows), tmp_path / "x.db"))
    assert code == 0 and "read as fraction" in out
    rows = [[str(i), a, "0", "0.5" if i else "50"] for i, a in enumerate(_archs(5))]
    code, out = run(*_acc_args(_write(tmp_path / "t2.csv", rows), tmp_path / "y.db", "--unit", "fraction"))
    assert code == 2 and "line 2: accuracy 50 is outside 0..1 (read as fraction)" in out


def test_bad_rows_are_reported_with_line_numbers_and_nothing_is_stored(tmp_path: Path) -> None:
    archs = _archs(6)
    rows = [
        ["0", archs[0], "5.0", "90"],
        ["1", "|conv_7x7~0|+|none~0|none~1|+|none~0|none~1|none~2|", "5.0", "90"],  # line 3
        ["2", archs[1], "", "90"],  # line 4: missing latency
        ["3", archs[2], "fast", "90"],  # line 5
        ["4", archs[0], "6.0", "90"],  # line 6: duplicate of line 2
        ["5", "", "5.0", "90"],  # line 7
        ["6", archs[3], "-1", "90"],  # line 8
    ]
    table, db = _write(tmp_path / "bad.csv", rows), tmp_path / "x.db"
    code, out = run(*_lat_args(table, db))
    assert code == 2
    line = out.strip()
    assert "\n" not in line and "nothing imported" in line and "7 bad row(s) of 7" in line
    needles = (
        "line 3: arch: unknown operation 'conv_7x7'",
        "line 4: missing latency",
        "line 5: latency 'fast'",
        "lines 2, 6: the same architecture",
        "line 7: missing architecture",
        "line 8: latency must be",
    )
    for needle in needles:
        assert needle in line, needle
    assert not db.exists() or ResultsDB(db).count_measurements() == 0


def test_a_conflicting_value_rolls_back_the_whole_table(tmp_path: Path) -> None:
    table, db = _good_table(tmp_path, 10), tmp_path / "x.db"
    assert run(*_lat_args(table, db))[0] == 0
    text = table.read_text().splitlines()
    parts = text[5].split(",")
    parts[2] = "999.0"
    text[5] = ",".join(parts)
    archs = _archs(20)[10:]
    text += [f"{100 + i},{a},{_latency(a)},90" for i, a in enumerate(archs)]
    table.write_text("\n".join(text) + "\n")
    code, out = run(*_lat_args(table, db))
    assert code == 2 and "table.csv:6" in out and "999.0" in out
    with ResultsDB(db) as store:
        assert store.count_measurements() == 10  # the 10 new rows were not stored either


def test_external_and_agent_measurements_never_mix(tmp_path: Path) -> None:
    table, db = _good_table(tmp_path, 5), tmp_path / "x.db"
    with ResultsDB(db) as store:
        store.add_measurement(spec_id="abc", device="bench", runtime="tflite", threads=1, request_id="r1",
                              status="ok", latency_ms_median=1.0)  # fmt: skip
    code, out = run(*_lat_args(table, db, device="bench"))
    assert code == 2 and "made by nnflash's agent" in out
    assert run(*_lat_args(table, db, device="pi4-ext"))[0] == 0
    with ResultsDB(db) as store, pytest.raises(Exception, match="imported from an external table"):
        store.add_measurement(spec_id="abc", device="pi4-ext", runtime="tflite", threads=1, request_id="r2",
                              status="ok", latency_ms_median=1.0)  # fmt: skip


def test_unknown_column_and_missing_file(tmp_path: Path) -> None:
    table = _good_table(tmp_path, 3)
    args = _lat_args(table, tmp_path / "x.db")
    args[args.index("lat")] = "latency_ms"
    code, out = run(*args)
    assert code == 2 and "no column 'latency_ms'" in out and "index, arch, lat, acc" in out
    code, out = run(*_lat_args(tmp_path / "nope.csv", tmp_path / "x.db"))
    assert code == 2 and "no such file" in out


def test_own_protocol_name_refused(tmp_path: Path) -> None:
    args = _acc_args(_good_table(tmp_path, 3), tmp_path / "x.db")
    args[args.index("ext-200ep")] = "quick"
    code, out = run(*args)
    assert code == 2 and "nnflash's own training presets" in out


def test_schema_4_database_gains_sources(tmp_path: Path) -> None:
    from nnflash.controller.store import MIGRATIONS

    path = tmp_path / "old.db"
    ResultsDB(path, migrations=MIGRATIONS[:4]).close()
    raw = sqlite3.connect(path)
    raw.execute(
        "INSERT INTO measurements(spec_id, device, runtime, request_id, status, latency_ms_median, created_at)"
        " VALUES ('s', 'd', 'tflite', 'r', 'ok', 2.0, 'then')"
    )
    raw.commit()
    raw.close()
    with ResultsDB(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.measurement_sources("d", "tflite") == ["agent"]
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT source FROM trainings").fetchall() == []
    raw.close()
