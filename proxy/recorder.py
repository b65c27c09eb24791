"""Bounded, batching recorder: requests enqueue rows and never wait on the disk.

One writer thread owns all writes to the store. Overflow policy: when the in-memory
queue is full, rows are appended to a spill file (JSON lines) that the writer replays
once it catches up, so a burst costs disk bandwidth, not records. Only if the spill
write itself fails is a row dropped; every path is counted.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.store import Store

log = logging.getLogger("tactician.recorder")

_TIMESTAMP_COLUMNS = ("started_at", "finished_at", "received_at")


@dataclass
class RecorderStats:
    enqueued: int = 0
    written: int = 0
    spilled: int = 0
    replayed: int = 0
    dropped: int = 0
    write_errors: int = 0
    batches: int = 0


class _Task:
    """Work that must run on the writer thread (snapshots, ingestion)."""

    def __init__(self, fn: Callable[[Store], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class _Timer:
    """The flush interval elapsed with a partial batch pending."""


_TIMER = _Timer()
_Item = tuple[str, dict[str, Any]] | _Task | _Timer | None


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        spill_path: Path,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spill_path = spill_path
        self.rejected_path = spill_path.with_name("rejected.jsonl")
        self.stats = RecorderStats()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._spill_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._stopping = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain everything queued (and spilled), then stop the writer."""
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    def record(self, table: str, row: dict[str, Any]) -> None:
        self.stats.enqueued += 1
        try:
            self._queue.put_nowait((table, row))
        except queue.Full:
            self._spill(table, row)

    def submit(self, fn: Callable[[Store], Any]) -> Future[Any]:
        """Run ``fn(store)`` on the writer thread, after everything queued before it."""
        task = _Task(fn)
        self._queue.put(task)
        return task.future

    # -- writer thread -------------------------------------------------------------
    def _run(self) -> None:
        self._replay_spill()
        pending: dict[str, list[dict[str, Any]]] = {}
        count = 0
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _TIMER
            if isinstance(item, tuple):
                pending.setdefault(item[0], []).append(item[1])
                count += 1
                if count < self.batch_size:
                    continue
            self._flush(pending)
            pending, count = {}, 0
            deadline = time.monotonic() + self.flush_interval_s
            if isinstance(item, _Task):
                # A snapshot must hold every row recorded before it, spilled ones too.
                if self.stats.spilled > self.stats.replayed:
                    self._replay_spill()
                self._run_task(item)
            elif item is None:
                self._drain_rest()
                return
            if self.stats.spilled > self.stats.replayed and self._queue.qsize() == 0:
                self._replay_spill()

    def _drain_rest(self) -> None:
        pending: dict[str, list[dict[str, Any]]] = {}
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                pending.setdefault(item[0], []).append(item[1])
            elif isinstance(item, _Task):
                self._flush(pending)
                pending = {}
                self._run_task(item)
        self._flush(pending)
        self._replay_spill()
        try:
            self.store.checkpoint()
        except Exception:
            log.exception("checkpoint at shutdown failed")

    def _run_task(self, task: _Task) -> None:
        try:
            task.future.set_result(task.fn(self.store))
        except Exception as exc:  # noqa: BLE001 - the caller gets the error via the future
            task.future.set_exception(exc)

    def _flush(self, pending: dict[str, list[dict[str, Any]]]) -> None:
        for table, rows in pending.items():
            if not rows:
                continue
            try:
                self.store.insert(table, rows)
                self.stats.written += len(rows)
                self.stats.batches += 1
            except Exception:
                log.exception("batch insert into %s failed; retrying row by row", table)
                self._insert_one_by_one(table, rows)

    def _insert_one_by_one(self, table: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                self.store.insert(table, [_valid_text(row)])
                self.stats.written += 1
            except Exception as exc:  # noqa: BLE001 - keep the row on disk for inspection
                self.stats.write_errors += 1
                log.error("row rejected by %s: %s", table, exc)
                self._append_jsonl(self.rejected_path, table, row)

    # -- spill ---------------------------------------------------------------------
    def _spill(self, table: str, row: dict[str, Any]) -> None:
        try:
            self._append_jsonl(self.spill_path, table, row)
            self.stats.spilled += 1
        except OSError:
            self.stats.dropped += 1
            log.exception("recorder queue full and spill failed: row dropped")

    def _append_jsonl(self, path: Path, table: str, row: dict[str, Any]) -> None:
        line = json.dumps({"table": table, "row": row}, default=_json_default)
        with self._spill_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def _replay_spill(self) -> None:
        """Move spilled rows into the store. Rename first so new spills go elsewhere."""
        with self._spill_lock:
            if self.spill_path.exists():
                work = self.spill_path.with_name(f"spill.{time.time_ns()}.replay")
                self.spill_path.replace(work)
        # Leftovers too: a crash may have interrupted an earlier replay.
        for leftover in sorted(self.spill_path.parent.glob("spill.*.replay")):
            self._replay_file(leftover)

    def _replay_file(self, path: Path) -> None:
        pending: dict[str, list[dict[str, Any]]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                # A torn last line after a crash: nothing else to recover from it.
                self.stats.write_errors += 1
                continue
            pending.setdefault(item["table"], []).append(_revive(item["row"]))
        self.stats.replayed += sum(len(v) for v in pending.values())
        for table, rows in pending.items():
            pending[table] = self._not_yet_stored(table, rows)
        self._flush(pending)
        path.unlink()

    def _not_yet_stored(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A crash between inserting a replayed file and deleting it would replay it
        twice; rows already in the store are skipped."""
        key = _KEYS[table]
        ids = [r[key] for r in rows if r.get(key)]
        if not ids:
            return rows
        found = self.store.query(
            f"SELECT {key} FROM {table} WHERE {key} IN (SELECT unnest(?::VARCHAR[]))", [ids])
        seen = {r[key] for r in found}
        return [r for r in rows if r.get(key) not in seen]


_KEYS = {"calls": "request_id", "outcomes": "outcome_id", "learner_runs": "run_id"}


def _valid_text(row: dict[str, Any]) -> dict[str, Any]:
    """The row with lone surrogates (JSON's "\\ud800", sent by clients that cut a
    string mid-emoji) replaced by U+FFFD: DuckDB refuses text that is not UTF-8, and
    a call the client was told succeeded must not be lost for one character. Only
    rows a batch insert refused come here, so the common path pays nothing."""
    return {k: _utf8(v) if isinstance(v, str)
            else json.dumps(v) if isinstance(v, dict | list) else v  # ASCII-escaped
            for k, v in row.items()}


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _revive(row: dict[str, Any]) -> dict[str, Any]:
    for col in _TIMESTAMP_COLUMNS:
        if isinstance(row.get(col), str):
            row[col] = datetime.fromisoformat(row[col])
    return row
