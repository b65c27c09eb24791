"""The DuckDB store: the only module that imports duckdb. It stores; it does not decide.

Migrations are append-only and named; applied names are kept in ``_migrations`` so an
old file is brought forward on open. The proxy owns the file read-write; other processes
read a snapshot (``snapshot``) or open it read-only when nobody writes.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from proxy.errors import TacticianError

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "001_calls",
        """
        CREATE TABLE calls (
            request_id VARCHAR NOT NULL,
            episode_id VARCHAR NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            endpoint VARCHAR NOT NULL,
            provider VARCHAR,
            model VARCHAR,
            stream BOOLEAN,
            status INTEGER,
            error VARCHAR,
            partial BOOLEAN,
            request_json VARCHAR,
            response_json VARCHAR,
            response_text VARCHAR,
            latency_ms DOUBLE,
            upstream_ms DOUBLE,
            ttfb_ms DOUBLE,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            task_text VARCHAR,
            system_text VARCHAR,
            arm VARCHAR,
            hint_text VARCHAR,
            hint_strategy VARCHAR,
            hint_stats VARCHAR,
            adapter_version VARCHAR,
            hint_latency_ms DOUBLE,
            hint_skip_reason VARCHAR,
            hint_source VARCHAR
        )
        """,
    ),
    (
        "002_outcomes",
        """
        CREATE TABLE outcomes (
            outcome_id VARCHAR NOT NULL,
            received_at TIMESTAMPTZ NOT NULL,
            request_id VARCHAR,
            episode_id VARCHAR,
            success BOOLEAN,
            score DOUBLE,
            note VARCHAR,
            metadata VARCHAR
        )
        """,
    ),
    (
        "003_call_outcomes_view",
        """
        CREATE VIEW call_outcomes AS
        WITH by_call AS (
            SELECT * FROM outcomes WHERE request_id IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY request_id
                                       ORDER BY received_at DESC, outcome_id DESC) = 1
        ), by_episode AS (
            SELECT * FROM outcomes WHERE request_id IS NULL AND episode_id IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY episode_id
                                       ORDER BY received_at DESC, outcome_id DESC) = 1
        )
        SELECT c.request_id, c.episode_id,
               coalesce(bc.outcome_id, be.outcome_id) AS outcome_id,
               coalesce(bc.success, be.success) AS success,
               coalesce(bc.score, be.score) AS score,
               CASE WHEN bc.outcome_id IS NOT NULL THEN 'call'
                    WHEN be.outcome_id IS NOT NULL THEN 'episode' END AS outcome_level
        FROM calls c
        LEFT JOIN by_call bc ON bc.request_id = c.request_id
        LEFT JOIN by_episode be ON be.episode_id = c.episode_id
        """,
    ),
    (
        "004_learner_runs",
        """
        CREATE TABLE learner_runs (
            run_id VARCHAR NOT NULL,
            started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ,
            status VARCHAR,
            version VARCHAR,
            decision VARCHAR,
            reason VARCHAR,
            metrics VARCHAR
        )
        """,
    ),
    ("005_calls_episode_index", "CREATE INDEX calls_episode ON calls (episode_id)"),
    (
        # A call's own latest outcome wins whole: 003 took success and score separately,
        # so a later score-only call outcome kept an earlier episode's success.
        "006_call_outcomes_whole_row",
        """
        CREATE OR REPLACE VIEW call_outcomes AS
        WITH by_call AS (
            SELECT * FROM outcomes WHERE request_id IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY request_id
                                       ORDER BY received_at DESC, outcome_id DESC) = 1
        ), by_episode AS (
            SELECT * FROM outcomes WHERE request_id IS NULL AND episode_id IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY episode_id
                                       ORDER BY received_at DESC, outcome_id DESC) = 1
        ), chosen AS (
            SELECT c.request_id, c.episode_id,
                   CASE WHEN bc.outcome_id IS NOT NULL THEN bc ELSE be END AS o,
                   CASE WHEN bc.outcome_id IS NOT NULL THEN 'call'
                        WHEN be.outcome_id IS NOT NULL THEN 'episode' END AS outcome_level
            FROM calls c
            LEFT JOIN by_call bc ON bc.request_id = c.request_id
            LEFT JOIN by_episode be ON be.episode_id = c.episode_id
        )
        SELECT request_id, episode_id, o.outcome_id AS outcome_id, o.success AS success,
               o.score AS score, outcome_level
        FROM chosen
        """,
    ),
)

CALL_COLUMNS: tuple[str, ...] = (
    "request_id", "episode_id", "started_at", "finished_at", "endpoint", "provider",
    "model", "stream", "status", "error", "partial", "request_json", "response_json",
    "response_text", "latency_ms", "upstream_ms", "ttfb_ms", "prompt_tokens",
    "completion_tokens", "total_tokens", "task_text", "system_text", "arm", "hint_text",
    "hint_strategy", "hint_stats", "adapter_version", "hint_latency_ms",
    "hint_skip_reason", "hint_source",
)
OUTCOME_COLUMNS: tuple[str, ...] = (
    "outcome_id", "received_at", "request_id", "episode_id", "success", "score", "note",
    "metadata",
)
RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "started_at", "finished_at", "status", "version", "decision", "reason",
    "metrics",
)
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "calls": CALL_COLUMNS,
    "outcomes": OUTCOME_COLUMNS,
    "learner_runs": RUN_COLUMNS,
}


class StoreError(TacticianError):
    code = "store_error"


class StoreLocked(StoreError):
    """Another process holds the file read-write (DuckDB allows only one)."""


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except (duckdb.IOException, duckdb.ConnectionException) as exc:
        if "lock" in str(exc).lower() or "different configuration" in str(exc):
            holder = ("read-write in another process (a proxy)" if read_only else
                      "in another process (a proxy, or a learner reading it while no "
                      "proxy ran)")
            raise StoreLocked(f"{path} is open {holder}") from exc
        raise StoreError(f"cannot open store {path}: {exc}") from exc


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    """One DuckDB file. Writes are expected from one thread (the recorder's writer);
    reads may come from any thread through per-call cursors."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = _connect(self.path, read_only)
        self._lock = threading.Lock()
        self._types: dict[str, dict[str, str]] = {}
        if not read_only:
            self.migrate()

    # -- lifecycle -----------------------------------------------------------------
    def migrate(self) -> list[str]:
        con = self._con
        con.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
        applied = []
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            con.execute("BEGIN")
            try:
                con.execute(sql)
                con.execute("INSERT INTO _migrations VALUES (?, ?)", [name, _now()])
                con.execute("COMMIT")
            except duckdb.Error:
                con.execute("ROLLBACK")
                raise
            applied.append(name)
        return applied

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def checkpoint(self) -> None:
        self._con.execute("CHECKPOINT")

    # -- writes --------------------------------------------------------------------
    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert rows (mappings of column → value; missing columns are NULL) in one
        statement that unnests one list per column: ~40k rows/s, where executemany or
        multi-row VALUES manage a few thousand."""
        if not rows:
            return 0
        columns = TABLE_COLUMNS[table]
        types = self._column_types(table)
        lists = [[_cell(row.get(c)) for row in rows] for c in columns]
        select = ", ".join(f"unnest(?::{types[c]}[])" for c in columns)
        self._con.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select}", lists
        )
        return len(rows)

    def _column_types(self, table: str) -> dict[str, str]:
        cached = self._types.get(table)
        if cached is None:
            described = self._con.execute(f"DESCRIBE {table}").fetchall()
            cached = {str(r[0]): str(r[1]) for r in described}
            self._types[table] = cached
        return cached

    def snapshot(self, dest: Path) -> Path:
        """Copy the whole database into ``dest`` so another process can read it while
        this one keeps writing. Runs on the writer's connection, so it sees every
        committed row."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".{uuid.uuid4().hex}.tmp")
        alias = "snap_" + uuid.uuid4().hex[:8]
        con = self._con
        con.execute(f"ATTACH '{_sql_str(tmp)}' AS {alias}")
        try:
            con.execute(f"COPY FROM DATABASE {_db_name(con)} TO {alias}")
        finally:
            con.execute(f"DETACH {alias}")
        tmp.replace(dest)
        return dest

    # -- reads ---------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run a read query on a fresh cursor (thread-safe) and return dict rows."""
        cur = self._con.cursor()
        try:
            res = cur.execute(sql, list(params or []))
            names = [d[0] for d in res.description or []]
            return [dict(zip(names, row, strict=True)) for row in res.fetchall()]
        finally:
            cur.close()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def migrations(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM _migrations ORDER BY name")]


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def _db_name(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT current_database()").fetchone()
    assert row is not None
    return f'"{row[0]}"'


def open_for_reading(path: Path) -> Store:
    """Open read-only; raises StoreLocked while a proxy holds the file."""
    return Store(path, read_only=True)


def rows_to_dicts(rows: Iterable[Sequence[Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    return [dict(zip(names, r, strict=True)) for r in rows]
