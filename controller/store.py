"""The results database: one SQLite file (WAL mode), the host's system of record.

Tables: ``specs``, ``artifacts``, ``devices`` (facts snapshots), ``campaigns``, ``measurements``,
``cost_models``. Every write is its own committed transaction (``synchronous=FULL``), so an
interrupted campaign loses nothing that was stored.

No measurement is stored twice:

* ``measurements.request_id`` is UNIQUE: the same agent response (say, fetched again from the
  device's journal after a reconnect) is ignored the second time;
* at most one ``ok`` row per (spec_id, device, runtime, threads, precision, visit) (a partial unique index): a
  rerun that races another one cannot store a second success. Failed rows accumulate (they count
  towards the retry limit, see :meth:`ResultsDB.failure_count`).

``precision`` is ``fp32`` or ``int8`` (TFLite's quantized export); rows stored before it existed are
``fp32``. ``visit`` numbers repeated, separate measurements of the same model: ordinary campaigns store
visit 0; ``nnflash calibrate`` measures every model in several passes (visits 0, 1, ...), spread
out in time, and fits to the least disturbed one (see ``calibration.workflow.usable_rows``).

Schema versioning: ``PRAGMA user_version`` holds the number of migrations applied;
:data:`MIGRATIONS` is the explicit, append-only list of migration functions. Opening a database
applies the missing ones inside one transaction (SQLite DDL is transactional), refuses a newer
schema with a clear error, and refuses a non-empty SQLite file that is not an nnflash database.
Opening never drops or rewrites data.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from nnflash.controller.errors import StoreError

__all__ = [
    "ResultsDB",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "APPLICATION_ID",
    "DEFAULT_DB_NAME",
    "EXPORT_COLUMNS",
    "write_csv",
    "write_jsonl",
    "measurement_fields",
]

DEFAULT_DB_NAME = "nnflash.db"
APPLICATION_ID = 0x6E6E666C  # "nnfl"
BUSY_TIMEOUT_MS = 30_000


def _migration_1(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE specs (
            spec_id TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            json TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE artifacts (
            sha256 TEXT PRIMARY KEY,
            spec_id TEXT NOT NULL,
            format TEXT NOT NULL,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            exporter TEXT,
            versions_json TEXT,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX artifacts_by_spec ON artifacts(spec_id, format)")
    db.execute(
        """CREATE TABLE devices (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            facts_json TEXT NOT NULL,
            seen_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX devices_by_name ON devices(name, id)")
    db.execute(
        """CREATE TABLE campaigns (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            args_json TEXT NOT NULL,
            status TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE measurements (
            id INTEGER PRIMARY KEY,
            campaign_id INTEGER REFERENCES campaigns(id),
            spec_id TEXT NOT NULL,
            device TEXT NOT NULL,
            runtime TEXT NOT NULL,
            threads INTEGER,
            request_id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            error TEXT,
            latency_ms_median REAL,
            latency_ms_mean REAL,
            latency_ms_p90 REAL,
            energy_mj REAL,
            samples_json TEXT,
            summary_json TEXT,
            state_json TEXT,
            energy_json TEXT,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX measurements_by_key ON measurements(spec_id, device, runtime, threads, status)")
    # At most one successful measurement per (spec, device, runtime, threads); NULL threads count
    # as one.
    db.execute(
        "CREATE UNIQUE INDEX measurements_one_ok ON measurements"
        "(spec_id, device, runtime, IFNULL(threads, -1)) WHERE status = 'ok'"
    )
    db.execute("CREATE INDEX measurements_by_campaign ON measurements(campaign_id)")
    db.execute(
        """CREATE TABLE cost_models (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            runtime TEXT NOT NULL,
            threads INTEGER,
            json TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX cost_models_by_key ON cost_models(device, runtime, threads, id)")


def _migration_2(db: sqlite3.Connection) -> None:
    """Repeated measurements of one model: a ``visit`` number, part of the one-ok-per-key index.
    Existing rows become visit 0, so every database keeps its meaning."""
    db.execute("ALTER TABLE measurements ADD COLUMN visit INTEGER NOT NULL DEFAULT 0")
    db.execute("DROP INDEX measurements_one_ok")
    db.execute(
        "CREATE UNIQUE INDEX measurements_one_ok ON measurements"
        "(spec_id, device, runtime, IFNULL(threads, -1), visit) WHERE status = 'ok'"
    )


def _migration_3(db: sqlite3.Connection) -> None:
    """Accuracy: trainings keyed by (spec, dataset, protocol hash, seed), the protocols by hash, and
    zero-cost proxies keyed by (spec, dataset, batch key)."""
    db.execute(
        """CREATE TABLE training_protocols (
            protocol_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            json TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE trainings (
            id INTEGER PRIMARY KEY,
            spec_id TEXT NOT NULL,
            dataset TEXT NOT NULL,
            protocol_hash TEXT NOT NULL,
            seed INTEGER NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            val_accuracy REAL,
            test_accuracy REAL,
            record_json TEXT,
            weights_path TEXT,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX trainings_by_key ON trainings(dataset, protocol_hash, seed, spec_id, status)")
    # At most one successful training per (spec, dataset, protocol, seed); failures accumulate.
    db.execute(
        "CREATE UNIQUE INDEX trainings_one_ok ON trainings(spec_id, dataset, protocol_hash, seed) WHERE status = 'ok'"
    )
    db.execute(
        """CREATE TABLE proxies (
            spec_id TEXT NOT NULL,
            dataset TEXT NOT NULL,
            batch_key TEXT NOT NULL,
            json TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (spec_id, dataset, batch_key)
        )"""
    )


def _migration_4(db: sqlite3.Connection) -> None:
    """Numeric precision of the deployed model (``fp32``, or ``int8`` for TFLite's quantized
    export): part of a measurement's key and of a cost model's. Existing rows were float32
    measurements and models, so they become ``fp32`` and keep their meaning."""
    db.execute("ALTER TABLE measurements ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32'")
    db.execute("DROP INDEX measurements_one_ok")
    db.execute(
        "CREATE UNIQUE INDEX measurements_one_ok ON measurements"
        "(spec_id, device, runtime, IFNULL(threads, -1), precision, visit) WHERE status = 'ok'"
    )
    db.execute("ALTER TABLE cost_models ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32'")


def _migration_5(db: sqlite3.Connection) -> None:
    """Where a measurement or a training comes from: ``agent`` (measured by nnflash's agent) or
    ``nnflash`` (trained by nnflash) for every existing row, ``external`` for rows read from a
    published table by ``nnflash import``. A device's measurements on one runtime come from one
    source only (:meth:`ResultsDB.add_measurement` and :meth:`ResultsDB.import_external` refuse
    to mix them)."""
    db.execute("ALTER TABLE measurements ADD COLUMN source TEXT NOT NULL DEFAULT 'agent'")
    db.execute("CREATE INDEX measurements_by_source ON measurements(device, runtime, source)")
    db.execute("ALTER TABLE trainings ADD COLUMN source TEXT NOT NULL DEFAULT 'nnflash'")


#: Append-only. Migration ``i`` (1-based) takes a database at ``user_version = i - 1`` to ``i``.
MIGRATIONS: List[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: Columns of ``nnflash results --csv/--json`` (in this order).
EXPORT_COLUMNS = (
    "id",
    "campaign_id",
    "spec_id",
    "device",
    "runtime",
    "threads",
    "precision",
    "visit",
    "status",
    "latency_ms_median",
    "latency_ms_mean",
    "latency_ms_p90",
    "energy_mj",
    "error",
    "request_id",
    "created_at",
)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> Optional[str]:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _loads(text: Optional[str]) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # a damaged file: say so, do not crash
        raise StoreError(f"results database holds a damaged JSON value ({type(exc).__name__}: {exc})") from None


class ResultsDB:
    """An open results database. Thread-safe: one connection guarded by a lock; several ``ResultsDB``
    objects (threads or processes) may open the same file, WAL + a busy timeout serialise
    writers."""

    def __init__(
        self,
        path: os.PathLike[str] | str,
        *,
        readonly: bool = False,
        migrations: Optional[Sequence[Callable[[sqlite3.Connection], None]]] = None,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._migrations = list(MIGRATIONS if migrations is None else migrations)
        self._lock = threading.RLock()
        self._db = self._connect()
        try:
            self._check_and_migrate()
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # damaged (sqlite's message may not be UTF-8)
            self._db.close()
            raise StoreError(f"{self.path} is not a readable nnflash results database ({exc})") from None
        except BaseException:
            self._db.close()
            raise

    # ---- opening

    def _connect(self) -> sqlite3.Connection:
        if self.readonly and not self.path.exists():
            raise StoreError(f"results database {self.path} does not exist")
        if not self.readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        try:
            if self.readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            else:
                db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot open results database {self.path}: {exc}") from None
        db.isolation_level = None  # autocommit; explicit BEGIN for multi-statement writes
        db.row_factory = sqlite3.Row
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not self.readonly:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                self.journal_mode = str(mode).lower()
                db.execute("PRAGMA synchronous = FULL")
            else:
                self.journal_mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            db.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            db.close()
            raise StoreError(f"{self.path} is not an nnflash results database ({exc})") from None
        return db

    def _check_and_migrate(self) -> None:
        db = self._db
        supported = len(self._migrations)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        if version > supported:
            raise StoreError(
                f"results database {self.path} has schema version {version}, newer than this "
                f"nnflash supports ({supported}); upgrade nnflash (the file was left untouched)"
            )
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(f"{self.path} is an SQLite database of another application")
        if version == supported:
            return
        if self.readonly:
            raise StoreError(
                f"results database {self.path} has schema version {version}; open it read-write "
                f"once to migrate it to {supported}"
            )
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                # re-read under the write lock: another process may have migrated meanwhile
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version == 0:
                    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                    if tables:
                        raise StoreError(
                            f"{self.path} is an SQLite database with tables but no nnflash schema "
                            "version; refusing to touch it"
                        )
                for index in range(version, supported):
                    self._migrations[index](db)
                    db.execute(f"PRAGMA user_version = {index + 1}")
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute("COMMIT")
            except BaseException as exc:
                db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot migrate results database {self.path}: {exc}") from None
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- low level

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise StoreError(f"results database {self.path}: {exc}") from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise StoreError(f"results database {self.path}: {exc}") from None

    # ---- specs

    def add_spec(self, spec_id: str, family: str, spec_json: str | Mapping[str, Any]) -> bool:
        """Store a spec (canonical JSON text or a dict). Returns False if it was already stored."""
        text = spec_json if isinstance(spec_json, str) else _dumps(spec_json)
        cur = self._execute(
            "INSERT INTO specs(spec_id, family, json, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (spec_id, family, text, utc_now()),
        )
        return cur.rowcount == 1

    def get_spec(self, spec_id: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM specs WHERE spec_id = ?", (spec_id,))
        return dict(rows[0]) if rows else None

    def spec_ids(self) -> List[str]:
        return [r[0] for r in self._query("SELECT spec_id FROM specs ORDER BY created_at, spec_id")]

    # ---- artifacts

    def add_artifact(
        self,
        sha256: str,
        spec_id: str,
        fmt: str,
        path: os.PathLike[str] | str,
        size: int,
        exporter: Optional[str] = None,
        versions: Optional[Mapping[str, Any]] = None,
    ) -> bool:
        """Record an exported file. Returns False if this sha256 was already recorded."""
        cur = self._execute(
            "INSERT INTO artifacts(sha256, spec_id, format, path, size, exporter,"
            " versions_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (sha256, spec_id, fmt, str(path), int(size), exporter, _dumps(versions), utc_now()),
        )
        return cur.rowcount == 1

    def find_artifact(self, spec_id: str, fmt: str) -> Optional[Dict[str, Any]]:
        """The newest artifact of ``spec_id`` in format ``fmt`` (``versions`` decoded), or None."""
        rows = self._query(
            "SELECT * FROM artifacts WHERE spec_id = ? AND format = ? ORDER BY created_at DESC LIMIT 1",
            (spec_id, fmt),
        )
        if not rows:
            return None
        out = dict(rows[0])
        out["versions"] = _loads(out.pop("versions_json"))
        return out

    # ---- devices

    def add_device_facts(self, name: str, facts: Mapping[str, Any]) -> int:
        """Append a facts snapshot (what ``hello`` reported); returns its row id."""
        cur = self._execute(
            "INSERT INTO devices(name, facts_json, seen_at) VALUES (?, ?, ?)",
            (name, _dumps(dict(facts)), utc_now()),
        )
        return int(cur.lastrowid or 0)

    def latest_device_facts(self, name: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT facts_json FROM devices WHERE name = ? ORDER BY id DESC LIMIT 1", (name,))
        return _loads(rows[0][0]) if rows else None

    # ---- campaigns

    def create_campaign(self, args: Mapping[str, Any], status: str = "running") -> int:
        cur = self._execute(
            "INSERT INTO campaigns(created_at, args_json, status) VALUES (?, ?, ?)",
            (utc_now(), _dumps(dict(args)), status),
        )
        return int(cur.lastrowid or 0)

    def set_campaign_status(self, campaign_id: int, status: str) -> None:
        cur = self._execute("UPDATE campaigns SET status = ? WHERE id = ?", (status, campaign_id))
        if cur.rowcount != 1:
            raise StoreError(f"no campaign with id {campaign_id}")

    def get_campaign(self, campaign_id: int) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM campaigns WHERE id = ?", (campaign_id,))
        if not rows:
            return None
        out = dict(rows[0])
        out["args"] = _loads(out.pop("args_json"))
        return out

    # ---- measurements

    def add_measurement(
        self,
        *,
        spec_id: str,
        device: str,
        runtime: str,
        threads: Optional[int],
        request_id: str,
        status: str,
        error: Optional[str] = None,
        campaign_id: Optional[int] = None,
        latency_ms_median: Optional[float] = None,
        latency_ms_mean: Optional[float] = None,
        latency_ms_p90: Optional[float] = None,
        energy_mj: Optional[float] = None,
        samples: Optional[Any] = None,
        summary: Optional[Mapping[str, Any]] = None,
        state: Optional[Mapping[str, Any]] = None,
        energy: Optional[Mapping[str, Any]] = None,
        visit: int = 0,
        precision: str = "fp32",
    ) -> bool:
        """Store one measurement (committed at once). Returns True if stored, False if it was a
        duplicate: the same ``request_id`` already stored, or an ``ok`` row already exists for this
        (spec_id, device, runtime, threads, precision, visit)."""
        if not request_id:
            raise StoreError("a measurement needs a request_id")
        if not status:
            raise StoreError("a measurement needs a status")
        if self._query(
            "SELECT 1 FROM measurements WHERE device = ? AND runtime = ? AND source = 'external' LIMIT 1",
            (device, runtime),
        ):
            raise StoreError(
                f"device {device!r} ({runtime}) in {self.path} holds measurements imported from an external "
                "table; nnflash's own measurements never join them: measure under another device name"
            )
        params = (
            campaign_id,
            spec_id,
            device,
            runtime,
            threads,
            request_id,
            status,
            error,
            _num(latency_ms_median),
            _num(latency_ms_mean),
            _num(latency_ms_p90),
            _num(energy_mj),
            _dumps(samples),
            _dumps(summary),
            _dumps(state),
            _dumps(energy),
            utc_now(),
            int(visit),
            precision,
        )
        cur = self._execute(
            "INSERT INTO measurements(campaign_id, spec_id, device, runtime, threads,"
            " request_id, status, error, latency_ms_median, latency_ms_mean, latency_ms_p90,"
            " energy_mj, samples_json, summary_json, state_json, energy_json, created_at, visit, precision)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            # only UNIQUE conflicts are ignored (request_id, one ok per key); NOT NULL and
            # foreign-key violations still raise
            " ON CONFLICT DO NOTHING",
            params,
        )
        return cur.rowcount == 1

    def add_response(
        self,
        response: Mapping[str, Any],
        *,
        spec_id: str,
        device: str,
        runtime: str,
        threads: Optional[int],
        campaign_id: Optional[int] = None,
        visit: int = 0,
        precision: str = "fp32",
    ) -> bool:
        """Store an agent's ``measure`` response as it came (see :func:`measurement_fields`)."""
        return self.add_measurement(
            spec_id=spec_id,
            device=device,
            runtime=runtime,
            threads=threads,
            campaign_id=campaign_id,
            visit=visit,
            precision=precision,
            **measurement_fields(response),
        )

    def measurement_sources(self, device: str, runtime: str) -> List[str]:
        """The sources (``agent``, ``external``) of the measurements stored for (device, runtime)."""
        rows = self._query(
            "SELECT DISTINCT source FROM measurements WHERE device = ? AND runtime = ? ORDER BY source",
            (device, runtime),
        )
        return [str(r[0]) for r in rows]

    def external_protocol(self, name: str) -> Optional[Dict[str, Any]]:
        """The training protocol imported under ``name`` (``nnflash import accuracy``), or None."""
        for row in self._query("SELECT * FROM training_protocols WHERE name = ? ORDER BY created_at", (name,)):
            record = _loads(row["json"])
            if isinstance(record, dict) and record.get("external"):
                return {"protocol_hash": row["protocol_hash"], "name": row["name"], "json": record}
        return None

    def import_external(
        self,
        *,
        specs: Sequence[tuple[str, str, str]],
        measurements: Sequence[Mapping[str, Any]] = (),
        trainings: Sequence[Mapping[str, Any]] = (),
        protocol: Optional[tuple[str, str, Mapping[str, Any]]] = None,
    ) -> Dict[str, int]:
        """Store an imported table in **one** transaction: every row or none.

        ``specs``: ``(spec_id, family, json)``; ``measurements``: ``ok`` latency rows (spec_id,
        device, runtime, precision, latency_ms, record) stored with ``source = 'external'``, no
        threads, visit 0; ``trainings``: ``ok`` rows (spec_id, dataset, protocol_hash,
        val_accuracy or test_accuracy, record) with ``source = 'external'``, seed 0; ``protocol``:
        ``(hash, name, json)``. A row whose key is already stored with the same value is skipped
        (an import can be rerun); with another value, or a device/runtime that holds nnflash's own
        measurements, it raises ``StoreError`` and nothing is written. Returns the counts stored
        and skipped."""
        counts = {"specs": 0, "measurements": 0, "trainings": 0, "unchanged": 0}
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                for key in {(m["device"], m["runtime"]) for m in measurements}:
                    own = db.execute(
                        "SELECT count(*) FROM measurements WHERE device = ? AND runtime = ? AND source != 'external'",
                        key,
                    ).fetchone()[0]
                    if own:
                        raise StoreError(
                            f"device {key[0]!r} ({key[1]}) in {self.path} holds {own} measurement(s) made by "
                            "nnflash's agent; imported latencies never join them: import under another device name"
                        )
                if protocol is not None:
                    db.execute(
                        "INSERT INTO training_protocols(protocol_hash, name, json, created_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING",
                        (protocol[0], protocol[1], _dumps(dict(protocol[2])), utc_now()),
                    )
                for spec_id, family, text in specs:
                    cur = db.execute(
                        "INSERT INTO specs(spec_id, family, json, created_at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                        (spec_id, family, text, utc_now()),
                    )
                    counts["specs"] += cur.rowcount
                for m in measurements:
                    old = db.execute(
                        "SELECT latency_ms_median, source FROM measurements WHERE spec_id = ? AND device = ? "
                        "AND runtime = ? AND threads IS NULL AND precision = ? AND visit = 0 AND status = 'ok'",
                        (m["spec_id"], m["device"], m["runtime"], m["precision"]),
                    ).fetchone()
                    if old is not None:
                        if old[1] == "external" and old[0] == _num(m["latency_ms"]):
                            counts["unchanged"] += 1
                            continue
                        raise StoreError(
                            f"{m['where']}: spec {m['spec_id']} already has a latency of {old[0]} ms on "
                            f"{m['device']} ({m['runtime']}) in {self.path}, the table says {m['latency_ms']}"
                        )
                    db.execute(
                        "INSERT INTO measurements(spec_id, device, runtime, threads, request_id, status,"
                        " latency_ms_median, summary_json, created_at, visit, precision, source)"
                        " VALUES (?, ?, ?, NULL, ?, 'ok', ?, ?, ?, 0, ?, 'external')",
                        (
                            m["spec_id"],
                            m["device"],
                            m["runtime"],
                            f"external:{m['device']}:{m['runtime']}:{m['precision']}:{m['spec_id']}",
                            _num(m["latency_ms"]),
                            _dumps(dict(m["record"])),
                            utc_now(),
                            m["precision"],
                        ),
                    )
                    counts["measurements"] += 1
                for t in trainings:
                    column = "val_accuracy" if t.get("val_accuracy") is not None else "test_accuracy"
                    value = _num(t[column])
                    old = db.execute(
                        f"SELECT {column}, source FROM trainings WHERE spec_id = ? AND dataset = ? "
                        "AND protocol_hash = ? AND seed = 0 AND status = 'ok'",
                        (t["spec_id"], t["dataset"], t["protocol_hash"]),
                    ).fetchone()
                    if old is not None:
                        if old[1] == "external" and old[0] == value:
                            counts["unchanged"] += 1
                            continue
                        raise StoreError(
                            f"{t['where']}: spec {t['spec_id']} already has a {column} of {old[0]} for "
                            f"{t['dataset']} under this protocol in {self.path}, the table says {value}"
                        )
                    db.execute(
                        f"INSERT INTO trainings(spec_id, dataset, protocol_hash, seed, status, {column},"
                        " record_json, created_at, source) VALUES (?, ?, ?, 0, 'ok', ?, ?, ?, 'external')",
                        (t["spec_id"], t["dataset"], t["protocol_hash"], value, _dumps(dict(t["record"])), utc_now()),
                    )
                    counts["trainings"] += 1
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StoreError(f"results database {self.path}: {exc}; nothing was imported") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return counts

    def has_request(self, request_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM measurements WHERE request_id = ?", (request_id,)))

    def is_done(
        self,
        spec_id: str,
        device: str,
        runtime: str,
        threads: Optional[int],
        visit: int = 0,
        *,
        precision: str = "fp32",
    ) -> bool:
        """Whether an ``ok`` measurement exists for this key (``threads=None`` matches NULL)."""
        return bool(
            self._query(
                "SELECT 1 FROM measurements WHERE spec_id = ? AND device = ? AND runtime = ?"
                " AND threads IS ? AND precision = ? AND visit = ? AND status = 'ok' LIMIT 1",
                (spec_id, device, runtime, threads, precision, int(visit)),
            )
        )

    def done_spec_ids(
        self, device: str, runtime: str, threads: Optional[int], visit: int = 0, *, precision: str = "fp32"
    ) -> set[str]:
        """Spec ids measured ``ok`` on this (device, runtime, threads, precision, visit): for
        skipping in bulk."""
        rows = self._query(
            "SELECT DISTINCT spec_id FROM measurements WHERE device = ? AND runtime = ?"
            " AND threads IS ? AND precision = ? AND visit = ? AND status = 'ok'",
            (device, runtime, threads, precision, int(visit)),
        )
        return {r[0] for r in rows}

    def failure_count(
        self, spec_id: str, device: str, runtime: str, threads: Optional[int], *, precision: str = "fp32"
    ) -> int:
        """Number of stored failed attempts (status neither 'ok' nor 'disturbed') for this key, over
        all visits (a model that keeps failing is given up whichever pass it fails in). Disturbed
        measurements are counted apart (:meth:`disturbed_counts`): the model was fine, the device
        was busy."""
        rows = self._query(
            "SELECT count(*) FROM measurements WHERE spec_id = ? AND device = ? AND runtime = ?"
            " AND threads IS ? AND precision = ? AND status NOT IN ('ok', 'disturbed')",
            (spec_id, device, runtime, threads, precision),
        )
        return int(rows[0][0])

    def failure_counts(
        self, device: str, runtime: str, threads: Optional[int], *, precision: str = "fp32"
    ) -> Dict[str, int]:
        """``{spec_id: failed attempts}`` on this (device, runtime, threads, precision), over all
        visits (``disturbed`` ones not included, see :meth:`failure_count`)."""
        rows = self._query(
            "SELECT spec_id, count(*) FROM measurements WHERE device = ? AND runtime = ?"
            " AND threads IS ? AND precision = ? AND status NOT IN ('ok', 'disturbed') GROUP BY spec_id",
            (device, runtime, threads, precision),
        )
        return {r[0]: int(r[1]) for r in rows}

    def disturbed_counts(
        self, device: str, runtime: str, threads: Optional[int], *, visit: int = 0, precision: str = "fp32"
    ) -> Dict[str, int]:
        """``{spec_id: disturbed measurements}`` on this (device, runtime, threads, precision, visit)
        (the campaign measures a disturbed model again, up to a limit per visit)."""
        rows = self._query(
            "SELECT spec_id, count(*) FROM measurements WHERE device = ? AND runtime = ?"
            " AND threads IS ? AND precision = ? AND visit = ? AND status = 'disturbed' GROUP BY spec_id",
            (device, runtime, threads, precision, int(visit)),
        )
        return {r[0]: int(r[1]) for r in rows}

    def status_counts(self, **filters: Any) -> Dict[str, int]:
        """``{status: measurements}`` over the rows :meth:`measurements` would return for
        ``filters`` (how many were ok, disturbed, failed ...)."""
        out: Dict[str, int] = {}
        for row in self.measurements(**filters):
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out

    def get_measurement(self, request_id: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM measurements WHERE request_id = ?", (request_id,))
        return _decode_measurement(rows[0]) if rows else None

    def measurements(
        self,
        *,
        campaign_id: Optional[int] = None,
        device: Optional[str] = None,
        status: Optional[str] = None,
        visit: Optional[int] = None,
        precision: Optional[str] = None,
        full: bool = False,
    ) -> List[Dict[str, Any]]:
        """Measurement rows, oldest first. ``full=True`` includes the decoded JSON columns
        (``samples``, ``summary``, ``state``, ``energy``); otherwise only :data:`EXPORT_COLUMNS`."""
        where: List[str] = []
        params: List[Any] = []
        if campaign_id is not None:
            where.append("campaign_id = ?")
            params.append(campaign_id)
        if device is not None:
            where.append("device = ?")
            params.append(device)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if visit is not None:
            where.append("visit = ?")
            params.append(int(visit))
        if precision is not None:
            where.append("precision = ?")
            params.append(precision)
        cols = "*" if full else ", ".join(EXPORT_COLUMNS)
        sql = f"SELECT {cols} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        rows = self._query(sql, params)
        if full:
            return [_decode_measurement(r) for r in rows]
        return [dict(r) for r in rows]

    def export_rows(self, **filters: Any) -> List[Dict[str, Any]]:
        """Rows for ``nnflash results --json|--csv`` (columns :data:`EXPORT_COLUMNS`)."""
        return self.measurements(full=False, **filters)

    def count_measurements(self, status: Optional[str] = None) -> int:
        if status is None:
            return int(self._query("SELECT count(*) FROM measurements")[0][0])
        return int(self._query("SELECT count(*) FROM measurements WHERE status = ?", (status,))[0][0])

    # ---- cost models

    def add_cost_model(
        self,
        device: str,
        runtime: str,
        threads: Optional[int],
        model_json: str | Mapping[str, Any],
        *,
        precision: str = "fp32",
    ) -> int:
        text = model_json if isinstance(model_json, str) else _dumps(model_json)
        cur = self._execute(
            "INSERT INTO cost_models(device, runtime, threads, json, created_at, precision) VALUES (?, ?, ?, ?, ?, ?)",
            (device, runtime, threads, text, utc_now(), precision),
        )
        return int(cur.lastrowid or 0)

    def latest_cost_model(
        self, device: str, runtime: str, threads: Optional[int], *, precision: str = "fp32"
    ) -> Optional[Dict[str, Any]]:
        """The newest cost model's row for this key (``json`` is the saved model text), or None."""
        rows = self._query(
            "SELECT * FROM cost_models WHERE device = ? AND runtime = ? AND threads IS ? AND precision = ?"
            " ORDER BY id DESC LIMIT 1",
            (device, runtime, threads, precision),
        )
        return dict(rows[0]) if rows else None

    # ---- trainings (accuracy)

    def add_training_protocol(self, protocol_hash: str, name: str, protocol_json: str | Mapping[str, Any]) -> bool:
        """Record a training protocol under its hash. Returns False if it was already stored."""
        text = protocol_json if isinstance(protocol_json, str) else _dumps(protocol_json)
        cur = self._execute(
            "INSERT INTO training_protocols(protocol_hash, name, json, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (protocol_hash, name, text, utc_now()),
        )
        return cur.rowcount == 1

    def get_training_protocol(self, protocol_hash: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM training_protocols WHERE protocol_hash = ?", (protocol_hash,))
        if not rows:
            return None
        out = dict(rows[0])
        out["json"] = _loads(out["json"])
        return out

    def add_training(
        self,
        *,
        spec_id: str,
        dataset: str,
        protocol_hash: str,
        seed: int,
        status: str,
        val_accuracy: Optional[float] = None,
        test_accuracy: Optional[float] = None,
        record: Optional[Mapping[str, Any]] = None,
        weights_path: Optional[str] = None,
        error: Optional[str] = None,
    ) -> bool:
        """Store one training outcome (committed at once). ``status`` is ``ok`` (accuracies set),
        ``diverged`` or ``failed`` (``error`` says why). Returns False when an ``ok`` training of
        the same (spec, dataset, protocol, seed) is already stored (nothing is written)."""
        if status not in TRAINING_STATUSES:
            raise StoreError(f"training status must be one of {', '.join(TRAINING_STATUSES)}, not {status!r}")
        if status == "ok" and (val_accuracy is None or test_accuracy is None):
            raise StoreError("an ok training needs its validation and test accuracy")
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO trainings(spec_id, dataset, protocol_hash, seed, status, error, val_accuracy, "
                    "test_accuracy, record_json, weights_path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        spec_id,
                        dataset,
                        protocol_hash,
                        int(seed),
                        status,
                        error,
                        _num(val_accuracy),
                        _num(test_accuracy),
                        _dumps(dict(record)) if record is not None else None,
                        weights_path,
                        utc_now(),
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            except sqlite3.Error as exc:
                raise StoreError(f"results database {self.path}: {exc}") from None
        return True

    def trainings(
        self,
        *,
        dataset: Optional[str] = None,
        protocol_hash: Optional[str] = None,
        seed: Optional[int] = None,
        status: Optional[str] = None,
        spec_ids: Optional[Iterable[str]] = None,
    ) -> List[Dict[str, Any]]:
        """Training rows, oldest first, with ``record`` decoded (``record_json`` removed)."""
        where: List[str] = []
        params: List[Any] = []
        filters = (("dataset", dataset), ("protocol_hash", protocol_hash), ("seed", seed), ("status", status))
        for column, value in filters:
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM trainings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        wanted = set(spec_ids) if spec_ids is not None else None
        out = []
        for row in self._query(sql, params):
            if wanted is not None and row["spec_id"] not in wanted:
                continue
            d = dict(row)
            d["record"] = _loads(d.pop("record_json"))
            out.append(d)
        return out

    def trained_spec_ids(self, dataset: str, protocol_hash: str, seed: int) -> set[str]:
        """Spec ids with an ``ok`` training for this (dataset, protocol, seed)."""
        rows = self._query(
            "SELECT spec_id FROM trainings WHERE dataset = ? AND protocol_hash = ? AND seed = ? AND status = 'ok'",
            (dataset, protocol_hash, int(seed)),
        )
        return {r[0] for r in rows}

    def training_failure_counts(self, dataset: str, protocol_hash: str, seed: int) -> Dict[str, int]:
        """Failed or diverged trainings per spec id for this (dataset, protocol, seed)."""
        rows = self._query(
            "SELECT spec_id, count(*) FROM trainings WHERE dataset = ? AND protocol_hash = ? AND seed = ? "
            "AND status != 'ok' GROUP BY spec_id",
            (dataset, protocol_hash, int(seed)),
        )
        return {r[0]: int(r[1]) for r in rows}

    # ---- zero-cost proxies

    def add_proxies(self, spec_id: str, dataset: str, batch_key: str, values: Mapping[str, Any]) -> None:
        """Store (or replace) the zero-cost proxies of a spec computed on one batch of a dataset."""
        self._execute(
            "INSERT INTO proxies(spec_id, dataset, batch_key, json, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(spec_id, dataset, batch_key) DO UPDATE SET json = excluded.json, "
            "created_at = excluded.created_at",
            (spec_id, dataset, batch_key, _dumps(dict(values)), utc_now()),
        )

    def proxies(
        self, dataset: str, batch_key: str, spec_ids: Optional[Iterable[str]] = None
    ) -> Dict[str, Dict[str, Any]]:
        """``{spec_id: {proxy: value}}`` stored for this dataset and batch."""
        rows = self._query(
            "SELECT spec_id, json FROM proxies WHERE dataset = ? AND batch_key = ?", (dataset, batch_key)
        )
        wanted = set(spec_ids) if spec_ids is not None else None
        return {r[0]: _loads(r[1]) for r in rows if wanted is None or r[0] in wanted}


TRAINING_STATUSES = ("ok", "diverged", "failed")


def measurement_fields(response: Mapping[str, Any]) -> Dict[str, Any]:
    """Split a ``measure`` response (protocol v1, record of ``agent/measure.py``) into the columns
    of :meth:`ResultsDB.add_measurement`: ``request_id``, ``status``, ``error``, the three latency
    statistics, ``energy_mj`` (per inference, gross; None without a meter), ``samples``
    (``samples_ms``), ``state`` (``{"before", "after"}``), ``energy`` (the meter's record) and
    ``summary`` (everything else in the record)."""
    result = response.get("result")
    record: Dict[str, Any] = dict(result) if isinstance(result, Mapping) else {}
    energy = record.pop("energy", None)
    samples = record.pop("samples_ms", None)
    state = {k: record.pop(f"state_{k}", None) for k in ("before", "after")}
    energy_mj = energy.get("energy_mj_per_inference") if isinstance(energy, Mapping) else None
    return {
        "request_id": str(response.get("id") or ""),
        "status": str(response.get("status") or ""),
        "error": response.get("error"),
        "latency_ms_median": record.get("latency_ms_median"),
        "latency_ms_mean": record.get("latency_ms_mean"),
        "latency_ms_p90": record.get("latency_ms_p90"),
        "energy_mj": energy_mj,
        "samples": samples,
        "state": state if any(v is not None for v in state.values()) else None,
        "energy": energy if isinstance(energy, Mapping) else None,
        "summary": record or None,
    }


def _num(value: Any) -> Optional[float]:
    if value is None:
        return None
    out = float(value)
    if out != out or out in (float("inf"), float("-inf")):
        return None
    return out


def _decode_measurement(row: sqlite3.Row) -> Dict[str, Any]:
    out = dict(row)
    for key in ("samples", "summary", "state", "energy"):
        out[key] = _loads(out.pop(f"{key}_json"))
    return out


# ---- exports


def write_csv(rows: Iterable[Mapping[str, Any]], fh: IO[str]) -> int:
    """Write export rows as CSV (header = :data:`EXPORT_COLUMNS`); returns the number of rows."""
    writer = csv.DictWriter(fh, fieldnames=list(EXPORT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in EXPORT_COLUMNS})
        n += 1
    return n


def write_jsonl(rows: Iterable[Mapping[str, Any]], fh: IO[str]) -> int:
    """Write export rows as JSON lines; returns the number of rows."""
    n = 0
    for row in rows:
        fh.write(json.dumps(dict(row), sort_keys=False) + "\n")
        n += 1
    return n


def rows_to_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    write_csv(rows, buf)
    return buf.getvalue()
