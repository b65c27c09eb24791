"""The DuckDB store and the recorder: migrations, batching, overflow, drain, snapshots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from proxy.app import open_store
from proxy.recorder import Recorder
from proxy.store import MIGRATIONS, Store, StoreLocked, open_for_reading
from tests.conftest import ProxyHandle
from tests.servers import free_port


def row(i: int) -> dict[str, object]:
    return {"request_id": f"r{i}", "episode_id": f"e{i}", "started_at": datetime.now(UTC),
            "endpoint": "/v1/chat/completions", "status": 200, "latency_ms": 1.5,
            "request_json": json.dumps({"i": i})}


def test_migrations_recorded_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    assert store.migrations() == sorted(name for name, _ in MIGRATIONS)
    store.close()
    again = Store(path)
    assert again.migrate() == []  # nothing re-applied
    applied = again.query("SELECT count(*) AS n FROM _migrations")[0]["n"]
    assert applied == len(MIGRATIONS)
    again.close()


def test_insert_throughput_and_types(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    rows = [row(i) for i in range(5000)]
    start = time.perf_counter()
    for i in range(0, len(rows), 500):
        store.insert("calls", rows[i:i + 500])
    rate = len(rows) / (time.perf_counter() - start)
    assert store.scalar("SELECT count(*) FROM calls") == 5000
    assert store.scalar("SELECT sum(latency_ms) FROM calls") == 7500.0
    assert rate > 5000, f"only {rate:.0f} rows/s"


def test_recorder_spills_on_overflow_and_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    rec = Recorder(store, queue_size=10, batch_size=5, flush_interval_s=0.01,
                   spill_path=tmp_path / "state" / "spill.jsonl")
    # Not started yet: the queue fills at 10 and the rest must spill to disk.
    for i in range(100):
        rec.record("calls", row(i))
    assert rec.stats.spilled == 90 and rec.stats.dropped == 0
    rec.start()
    rec.stop()
    assert store.scalar("SELECT count(DISTINCT request_id) FROM calls") == 100
    assert rec.stats.replayed == 90 and not (tmp_path / "state" / "spill.jsonl").exists()


def test_work_on_the_writer_sees_rows_spilled_before_it(tmp_path: Path) -> None:
    """A snapshot (or any submitted task) must include every row recorded before it was
    asked for, spilled ones too, not only what the queue held."""
    store = Store(tmp_path / "s.duckdb")
    rec = Recorder(store, queue_size=10, batch_size=1000, flush_interval_s=60,
                   spill_path=tmp_path / "state" / "spill.jsonl")
    rec.start()
    gate = threading.Event()
    rec.submit(lambda _: gate.wait(10))  # hold the writer busy
    for i in range(30):
        rec.record("calls", row(i))
    assert rec.stats.spilled == 20
    counted: list[Future[int]] = []
    asker = threading.Thread(target=lambda: counted.append(
        rec.submit(lambda s: s.scalar("SELECT count(*) FROM calls"))))
    asker.start()  # blocks until the writer makes room in the queue
    gate.set()
    asker.join(10)
    assert counted[0].result(10) == 30
    rec.stop()


def test_recorder_isolates_a_bad_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    rec = Recorder(store, queue_size=100, batch_size=100, flush_interval_s=0.01,
                   spill_path=tmp_path / "spill.jsonl")
    rec.start()
    rec.record("calls", row(1))
    rec.record("calls", {**row(2), "status": "not-a-number"})
    rec.record("calls", row(3))
    rec.stop()
    assert store.scalar("SELECT count(*) FROM calls") == 2
    assert rec.stats.write_errors == 1
    assert "not-a-number" in (tmp_path / "rejected.jsonl").read_text()


def test_shutdown_drains_queue(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    rec = Recorder(store, queue_size=100_000, batch_size=1000, flush_interval_s=10,
                   spill_path=tmp_path / "spill.jsonl")
    rec.start()
    for i in range(3000):
        rec.record("calls", row(i))
    rec.stop()
    assert store.scalar("SELECT count(*) FROM calls") == 3000


def test_second_writer_is_refused_and_snapshot_is_readable(proxy: ProxyHandle) -> None:
    httpx.post(f"{proxy.base_url}/chat/completions",
               json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    proxy.wait_rows("SELECT 1 FROM calls", 1)
    code = ("from proxy.store import open_for_reading, StoreLocked\n"
            f"try:\n    open_for_reading({str(proxy.config.store_path)!r})\n"
            "except StoreLocked:\n    print('locked')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "locked"
    snap = httpx.post(f"{proxy.base_url}/tactician/snapshot").json()["path"]
    copy = open_for_reading(Path(snap))
    assert copy.scalar("SELECT count(*) FROM calls") == 1
    assert copy.migrations() == sorted(name for name, _ in MIGRATIONS)
    copy.close()


def test_snapshot_needs_admin_token_when_configured(make_proxy: object) -> None:
    proxy = make_proxy(admin={"token": "adm"})  # type: ignore[operator]
    r = httpx.post(f"{proxy.base_url}/tactician/snapshot")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.post(f"{proxy.base_url}/tactician/snapshot",
                    headers={"authorization": "Bearer adm"})
    assert ok.status_code == 200 and Path(ok.json()["path"]).is_file()


def test_snapshots_refuse_web_pages_and_old_ones_are_pruned(proxy: ProxyHandle) -> None:
    url = f"{proxy.base_url}/tactician/snapshot"
    page = httpx.post(url, headers={"origin": "https://evil.example",
                                    "content-type": "text/plain"}, content=b"x")
    assert page.status_code == 403
    folder = proxy.config.state_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    leftover, recent = folder / "store-1.duckdb", folder / "store-2.duckdb"
    for f in (leftover, recent):
        f.write_bytes(b"old")
    day_ago = time.time() - 25 * 3600
    os.utime(leftover, (day_ago, day_ago))
    fresh = Path(httpx.post(url).json()["path"])
    assert fresh.is_file() and recent.is_file() and not leftover.exists()


def test_store_locked_error_type(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    Store(path).close()
    code = ("import time\nfrom proxy.store import Store\n"
            f"s = Store({str(path)!r})\nprint('ready', flush=True)\ntime.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked):
            open_for_reading(path)
    finally:
        holder.kill()
        holder.wait()


def test_the_proxy_waits_for_a_learner_reading_the_store(tmp_path: Path) -> None:
    # A learner run while no proxy ran opens the file read-only for its dataset build.
    path = tmp_path / "s.duckdb"
    Store(path).close()
    code = ("import time\nfrom proxy.store import open_for_reading\n"
            f"s = open_for_reading({str(path)!r})\nprint('ready', flush=True)\n"
            "time.sleep(1.5)\ns.close()\n")
    for wait_s, opens in ((0.3, False), (20.0, True)):
        reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  text=True)
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        try:
            if opens:
                open_store(path, wait_s).close()
            else:
                with pytest.raises(StoreLocked, match="learner"):
                    open_store(path, wait_s)
        finally:
            reader.wait(30)


def test_kill_9_loses_at_most_a_flush_interval(tmp_path: Path, fake: object) -> None:
    """A real proxy process under load is killed with SIGKILL; the file must open,
    and every call answered more than ~1 s before the kill must be in it."""
    port = free_port()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"upstream: {{base_url: '{fake.url}/v1'}}\n"  # type: ignore[attr-defined]
        f"store: {{path: '{tmp_path / 'k.duckdb'}'}}\n"
        "guidance: {enabled: false}\nlearner: {schedule: null}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stderr=subprocess.DEVNULL)
    answered: list[tuple[float, str]] = []
    try:
        _wait_up(port)
        with httpx.Client() as c:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                r = c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
                answered.append((time.monotonic(), r.headers["x-request-id"]))
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    store = open_for_reading(tmp_path / "k.duckdb")
    stored = {r["request_id"] for r in store.query("SELECT request_id FROM calls")}
    old = [rid for t, rid in answered if killed_at - t > 1.0]
    assert old and all(rid in stored for rid in old)
    assert len(stored) >= len(old)


def _wait_up(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("proxy did not start")


def test_replay_after_a_crash_does_not_duplicate(tmp_path: Path) -> None:
    """A crash after a replayed spill file was inserted but before it was deleted."""
    store = Store(tmp_path / "s.duckdb")
    store.insert("calls", [row(1), row(2)])
    replay = tmp_path / "state" / "spill.123.replay"
    replay.parent.mkdir(parents=True)
    stamp = "2026-01-01T00:00:00+00:00"
    lines = [json.dumps({"table": "calls", "row": {**row(i), "started_at": stamp}})
             for i in (1, 2, 3)]
    replay.write_text("\n".join(lines) + "\n")
    rec = Recorder(store, queue_size=10, batch_size=5, flush_interval_s=0.01,
                   spill_path=tmp_path / "state" / "spill.jsonl")
    rec.start()
    rec.stop()
    ids = [r["request_id"] for r in store.query("SELECT request_id FROM calls ORDER BY 1")]
    assert ids == ["r1", "r2", "r3"] and not replay.exists()
