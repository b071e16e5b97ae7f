"""``nnflash import``: latencies measured and accuracies trained elsewhere, read from a CSV table.

A table has a header row and one row per architecture; ``arch_column`` holds NAS-Bench-201
architecture strings (the ``nb201`` family, ``models.nb201``), the value column a latency in ms or an
accuracy. Every row is checked before anything is written; a table with bad rows (an unknown or
malformed architecture string, a missing or non-numeric value, a value out of range, the same
architecture twice) is refused as a whole with the line numbers of the bad rows, and a good table is
stored in one transaction (:meth:`ResultsDB.import_external`), so nothing is ever half-imported.

Imported rows carry ``source = 'external'``: a device's latencies come either from nnflash's agent or
from imported tables, never both (the store refuses to mix them), and an imported device needs no
inventory entry (``calibrate --from-db`` reads only the database). Imported accuracies live under a
protocol of their own name, recorded as external (never one of nnflash's training presets), with
seed 0 (the table's value is whatever the source reports, e.g. a mean over its seeds); an accuracy
table holds either validation or test accuracies (``target``).

Line numbers are the file's own (the header is line 1).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnflash.controller.store import ResultsDB
from nnflash.models.errors import NnflashError, SpecError
from nnflash.models.nb201 import Nb201Spec
from nnflash.models.training_protocol import PRESETS as PROTOCOL_PRESETS

#: How many bad rows an error message names before it says "and N more".
MAX_LISTED = 8
UNITS = ("auto", "percent", "fraction")
TARGETS = ("test", "val")


class ImportTableError(NnflashError, ValueError):
    """A table that cannot be imported (nothing was written)."""


@dataclass
class Problem:
    lines: list[int]
    message: str

    def __str__(self) -> str:
        where = f"line {self.lines[0]}" if len(self.lines) == 1 else "lines " + ", ".join(map(str, self.lines))
        return f"{where}: {self.message}"


@dataclass
class TableRow:
    line: int
    arch: str
    value: str


@dataclass
class ImportResult:
    table: str
    rows: int
    stored: int
    unchanged: int
    new_specs: int
    unit: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_table(path: str | Path, arch_column: str, value_column: str) -> list[TableRow]:
    """The (line, architecture, value) of every data row; errors for a missing file, a missing column."""
    p = Path(path)
    try:
        fh = p.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise ImportTableError(f"{p}: no such file") from None
    except OSError as e:
        raise ImportTableError(f"{p}: cannot read: {e.strerror or e}") from None
    with fh:
        try:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ImportTableError(f"{p}: empty file (expected a CSV header row)")
            header = [h.strip() for h in header]
            for col, opt in ((arch_column, "--arch-column"), (value_column, "the value column")):
                if col not in header:
                    raise ImportTableError(f"{p}: no column {col!r} ({opt}); columns: {', '.join(header)}")
            ia, iv = header.index(arch_column), header.index(value_column)
            rows = []
            for rec in reader:
                if not rec or all(not x.strip() for x in rec):
                    continue
                cells = [x.strip() for x in rec] + ["", ""]
                rows.append(
                    TableRow(reader.line_num, cells[ia] if ia < len(rec) else "", cells[iv] if iv < len(rec) else "")
                )
        except UnicodeDecodeError:
            raise ImportTableError(f"{p}: not a UTF-8 text file") from None
        except csv.Error as e:
            raise ImportTableError(f"{p}: malformed CSV: {e}") from None
    if not rows:
        raise ImportTableError(f"{p}: no data rows")
    return rows


def _number(text: str) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _refuse(path: str | Path, problems: list[Problem], n_rows: int) -> None:
    if not problems:
        return
    problems.sort(key=lambda q: q.lines[0])
    n_lines = len({ln for q in problems for ln in q.lines})
    shown = "; ".join(str(q) for q in problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise ImportTableError(f"{path}: {n_lines} bad row(s) of {n_rows}, nothing imported: {shown}{more}")


def _specs(rows: Sequence[TableRow], problems: list[Problem], **spec_fields: Any) -> dict[int, Nb201Spec]:
    """The spec of every row with a valid architecture string; duplicates become one problem."""
    out: dict[int, Nb201Spec] = {}
    first: dict[str, list[int]] = {}
    for r in rows:
        if not r.arch:
            problems.append(Problem([r.line], "missing architecture string"))
            continue
        try:
            spec = Nb201Spec.from_dict({"family": "nb201", "arch": r.arch, **spec_fields})
        except SpecError as e:
            problems.append(Problem([r.line], str(e)))
            continue
        out[r.line] = spec
        first.setdefault(spec.spec_id, []).append(r.line)
    for lines in first.values():
        if len(lines) > 1:
            problems.append(Problem(lines, f"the same architecture ({out[lines[0]].arch}) more than once"))
    return out


def import_latency(
    path: str | Path,
    db_path: str | Path,
    *,
    device: str,
    runtime: str,
    arch_column: str,
    latency_column: str,
    precision: str = "fp32",
) -> ImportResult:
    """Import a table of latencies (ms, one per architecture) measured on ``device`` with ``runtime``."""
    if not device.strip():
        raise ImportTableError("--device: must be a non-empty name")
    rows = read_table(path, arch_column, latency_column)
    problems: list[Problem] = []
    specs = _specs(rows, problems)
    values: dict[int, float] = {}
    for r in rows:
        v = _number(r.value)
        if not r.value:
            problems.append(Problem([r.line], f"missing latency in column {latency_column!r}"))
        elif v is None:
            problems.append(Problem([r.line], f"latency {r.value!r} is not a finite number"))
        elif v <= 0:
            problems.append(Problem([r.line], f"latency must be positive, got {r.value}"))
        else:
            values[r.line] = v
    _refuse(path, problems, len(rows))
    table = str(Path(path).name)
    measurements = [
        {
            "spec_id": specs[r.line].spec_id,
            "device": device,
            "runtime": runtime,
            "precision": precision,
            "latency_ms": values[r.line],
            "where": f"{path}:{r.line}",
            "record": {"source": "external", "table": table, "line": r.line, "column": latency_column},
        }
        for r in rows
    ]
    with ResultsDB(db_path) as db:
        counts = db.import_external(
            specs=[(s.spec_id, s.family, s.canonical_json()) for s in specs.values()], measurements=measurements
        )
    return ImportResult(str(path), len(rows), counts["measurements"], counts["unchanged"], counts["specs"])


def external_protocol_record(name: str) -> tuple[str, dict[str, Any]]:
    """The hash and record of an imported accuracy protocol named ``name``."""
    record = {"external": True, "name": name}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12], record


def import_accuracy(
    path: str | Path,
    db_path: str | Path,
    *,
    dataset: str,
    protocol: str,
    arch_column: str,
    accuracy_column: str,
    unit: str = "auto",
    target: str = "test",
) -> ImportResult:
    """Import a table of trained accuracies on ``dataset`` under the external protocol ``protocol``.

    ``unit``: ``percent`` (0..100), ``fraction`` (0..1) or ``auto`` (percent when any value is above
    1, else fraction; the result says which). Stored as fractions."""
    from nnflash.models.datasets import dataset_info

    info = dataset_info(dataset)
    if unit not in UNITS:
        raise ImportTableError(f"--unit: must be one of {', '.join(UNITS)}, got {unit!r}")
    if target not in TARGETS:
        raise ImportTableError(f"--target: must be one of {', '.join(TARGETS)}, got {target!r}")
    if not protocol.strip():
        raise ImportTableError("--protocol: must be a non-empty name")
    if protocol in PROTOCOL_PRESETS:
        raise ImportTableError(
            f"--protocol: {protocol!r} is one of nnflash's own training presets; give the imported "
            "accuracies a name of their own (e.g. nb201-200ep)"
        )
    rows = read_table(path, arch_column, accuracy_column)
    problems: list[Problem] = []
    specs = _specs(rows, problems, input_shape=list(info.input_shape), num_classes=info.num_classes)
    raw: dict[int, float] = {}
    for r in rows:
        v = _number(r.value)
        if not r.value:
            problems.append(Problem([r.line], f"missing accuracy in column {accuracy_column!r}"))
        elif v is None:
            problems.append(Problem([r.line], f"accuracy {r.value!r} is not a finite number"))
        else:
            raw[r.line] = v
    chosen = unit
    if unit == "auto":
        chosen = "percent" if any(v > 1.0 for v in raw.values()) else "fraction"
    top = 100.0 if chosen == "percent" else 1.0
    for line, v in raw.items():
        if not 0.0 <= v <= top:
            problems.append(Problem([line], f"accuracy {v:g} is outside 0..{top:g} (read as {chosen})"))
    _refuse(path, problems, len(rows))
    phash, record = external_protocol_record(protocol)
    column = "test_accuracy" if target == "test" else "val_accuracy"
    table = str(Path(path).name)
    trainings = [
        {
            "spec_id": specs[r.line].spec_id,
            "dataset": dataset,
            "protocol_hash": phash,
            column: raw[r.line] / top,
            "where": f"{path}:{r.line}",
            "record": {"source": "external", "table": table, "line": r.line, "column": accuracy_column, "unit": chosen},
        }
        for r in rows
    ]
    with ResultsDB(db_path) as db:
        counts = db.import_external(
            specs=[(s.spec_id, s.family, s.canonical_json()) for s in specs.values()],
            trainings=trainings,
            protocol=(phash, protocol, record),
        )
    return ImportResult(
        str(path),
        len(rows),
        counts["trainings"],
        counts["unchanged"],
        counts["specs"],
        unit=chosen,
        extra={"protocol_hash": phash, "target": target},
    )
