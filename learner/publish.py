"""Versioned adapters in the state folder, the ``current.json`` pointer, and run records.

Layout (see docs/architecture.md)::

    adapters/v000007/{adapter.gguf, catalog.json, manifest.json}
    adapters/v000007/peft/{adapter_model.safetensors, adapter_config.json}
                            the same adapter for training to continue from (learner/warm.py)
    adapters/v000007/labels.json
                            what the gate's llama.cpp pass labelled, by task, for the next
                            night's baseline to reuse (learner/label_cache.py)
    adapters/current.json   {"version", "adapter": "v000007/adapter.gguf", "catalog": ...}
    runs/<run_id>.json      one learner_runs row per run, ingested by the proxy

A version directory appears whole (built under a temporary name, then renamed) and
``current.json`` is replaced atomically, so the proxy's watcher never sees half a
version. Callers serialise runs with ``run_lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from learner.label_cache import FILE as LABELS_FILE
from proxy.config import Config
from proxy.store import RUN_COLUMNS, Store, StoreError

_VERSION = re.compile(r"^v(\d{6})$")
PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json")


class LearnerBusy(RuntimeError):
    """Another learner process holds the state folder."""


@dataclass(frozen=True)
class Current:
    version: str
    adapter: Path
    catalog: Path


def adapters_dir(state_dir: Path) -> Path:
    return state_dir / "adapters"


def runs_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Temp file in the same folder, fsync, rename over, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    """One learner at a time per state folder (a scheduled run and a manual one would
    otherwise race for the next version number)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "learner.lock", "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LearnerBusy(f"another learner run holds {state_dir / 'learner.lock'}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- versions --------------------------------------------------------------------------
def versions(state_dir: Path) -> list[str]:
    """Published versions, oldest first."""
    root = adapters_dir(state_dir)
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(names)


def next_version(state_dir: Path) -> str:
    existing = versions(state_dir)
    last = int(existing[-1][1:]) if existing else 0
    return f"v{last + 1:06d}"


def read_current(state_dir: Path) -> Current | None:
    pointer = adapters_dir(state_dir) / "current.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
        root = adapters_dir(state_dir)
        return Current(str(info["version"]), root / info["adapter"], root / info["catalog"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{pointer} is unreadable ({type(exc).__name__}: {exc}); "
                           "point it at a kept version with `learner rollback` or "
                           "delete it to serve the base model") from exc


def read_manifest(state_dir: Path, version: str) -> dict[str, Any]:
    path = adapters_dir(state_dir) / version / "manifest.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def point_current(state_dir: Path, version: str) -> None:
    folder = adapters_dir(state_dir) / version
    for name in ("adapter.gguf", "catalog.json", "manifest.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; not pointing current at it")
    write_json_atomic(
        adapters_dir(state_dir) / "current.json",
        {"version": version, "adapter": f"{version}/adapter.gguf",
         "catalog": f"{version}/catalog.json"},
    )


def publish_version(
    state_dir: Path, adapter_gguf: Path, catalog_json: str, manifest: dict[str, Any],
    *, keep: int, make_current: bool = True, peft_dir: Path | None = None,
    labels_json: str | None = None,
) -> str:
    """Copy the adapter, catalog and manifest (and the PEFT weights and the gate's
    labels, when given) into the next version and (by default) point ``current.json``
    at it; then drop versions beyond ``keep``."""
    root = adapters_dir(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(state_dir)
    staging = root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        shutil.copyfile(adapter_gguf, staging / "adapter.gguf")
        (staging / "catalog.json").write_text(catalog_json, encoding="utf-8")
        write_json_atomic(staging / "manifest.json", {**manifest, "version": version})
        written = ["adapter.gguf", "catalog.json"]
        if labels_json is not None:
            (staging / LABELS_FILE).write_text(labels_json, encoding="utf-8")
            written.append(LABELS_FILE)
        if peft_dir is not None:
            (staging / "peft").mkdir()
            for name in PEFT_FILES:
                shutil.copyfile(peft_dir / name, staging / "peft" / name)
            written += [f"peft/{name}" for name in PEFT_FILES]
        for name in written:
            with open(staging / name, "rb") as fh:
                os.fsync(fh.fileno())
        if peft_dir is not None:
            _fsync_dir(staging / "peft")
        _fsync_dir(staging)
        os.replace(staging, root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(root)
    if make_current:
        point_current(state_dir, version)
    prune(state_dir, keep)
    return version


def peft_weights(state_dir: Path, version: str) -> Path | None:
    """The version's PEFT adapter folder, if it was published with one."""
    folder = adapters_dir(state_dir) / version / "peft"
    return folder if all((folder / name).is_file() for name in PEFT_FILES) else None


def prune(state_dir: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions; the current one always stays."""
    current = read_current(state_dir)
    existing = versions(state_dir)
    doomed = existing[: max(0, len(existing) - max(keep, 1))]
    removed = []
    for version in doomed:
        if current is not None and version == current.version:
            continue
        shutil.rmtree(adapters_dir(state_dir) / version, ignore_errors=True)
        removed.append(version)
    return removed


def rollback(state_dir: Path) -> tuple[str, str]:
    """Point ``current.json`` at the newest kept version older than the current one.
    Returns (from, to)."""
    current = read_current(state_dir)
    if current is None:
        raise RuntimeError("no current adapter to roll back from")
    older = [v for v in versions(state_dir) if v < current.version]
    if not older:
        raise RuntimeError(f"no kept version older than {current.version} to roll back to")
    point_current(state_dir, older[-1])
    return current.version, older[-1]


# -- run records -----------------------------------------------------------------------
def now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return f"{now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def run_row(
    run_id: str, started_at: datetime, status: str, *, version: str | None = None,
    decision: str | None = None, reason: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One learner_runs row (timestamps as ISO text, metrics as JSON text)."""
    return {
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "finished_at": now().isoformat(),
        "status": status,
        "version": version,
        "decision": decision,
        "reason": reason,
        "metrics": json.dumps(metrics or {}, default=str),
    }


def record_run(config: Config, row: dict[str, Any]) -> bool:
    """Write runs/<run_id>.json; also insert into the store when no proxy holds it.
    Returns whether the row went into the store directly (the proxy's ingestion
    skips run ids already present, so the file is harmless either way)."""
    assert set(row) == set(RUN_COLUMNS)
    write_json_atomic(runs_dir(config.state_dir) / f"{row['run_id']}.json", row)
    if not config.store_path.exists():
        return False
    try:
        store = Store(config.store_path)
    except StoreError:  # StoreLocked included: the proxy will ingest the file
        return False
    try:
        present = store.query("SELECT 1 FROM learner_runs WHERE run_id = ?", [row["run_id"]])
        if not present:
            store.insert("learner_runs", [row])
    finally:
        store.close()
    return True


def recent_runs(state_dir: Path, limit: int = 10) -> list[dict[str, Any]]:
    """Newest first, from the run files (ingested ones included)."""
    root = runs_dir(state_dir)
    files = [*root.glob("*.json"), *root.glob("ingested/*.json")] if root.is_dir() else []
    rows = []
    for path in files:
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    rows.sort(key=lambda r: (str(r.get("started_at")), str(r.get("run_id"))), reverse=True)
    return rows[:limit]
