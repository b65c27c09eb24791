"""Recorder throughput: rows per second through ``proxy.recorder.Recorder`` + ``Store``,
and what writing them costs the event loop that serves requests.

The rows are real call rows (``Call.to_row``) of a typical chat completion. *Burst*:
enqueue as fast as possible and time until the writer has committed them all.
*Sustained*: an asyncio loop enqueues at a fixed rate while a ticker measures how late
a 1 ms sleep wakes up (event-loop lag, which every in-flight request would pay), first
with the recorder idle, then writing; ``record()`` itself is timed too.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Protocol

from bench.loadgen import percentile
from proxy.calls import Call
from proxy.ids import uuid7
from proxy.recorder import Recorder
from proxy.store import Store

SUSTAINED_RATE = 5000.0  # rows/s: the target
TICK_S = 0.001


class CheckSink(Protocol):
    def add(self, name: str, ok: bool, detail: str = "") -> None: ...


def call_row() -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a careful coding agent. " * 8},
        {"role": "user", "content": "Fix the billing export and report what changed. " * 4}]}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {
                  "role": "assistant", "content": "I listed the constraints first. " * 10}}],
              "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200}}
    call = Call(request_id=uuid7(), episode_id="ep", endpoint="/v1/chat/completions",
                method="POST", raw_body=json.dumps(body).encode(), body=body, status=200,
                response_raw=json.dumps(answer).encode(), task_text="Fix the billing export")
    return call.to_row(lambda text: text)


def _recorder(directory: Path, name: str) -> tuple[Store, Recorder]:
    store = Store(directory / f"{name}.duckdb")
    recorder = Recorder(store, queue_size=50_000, batch_size=500, flush_interval_s=0.2,
                        spill_path=directory / f"{name}.state" / "spill.jsonl")
    recorder.start()
    return store, recorder


def burst(directory: Path, rows: int) -> float:
    """Rows per second the writer commits when it is never short of work."""
    store, rec = _recorder(directory, "burst")
    template = call_row()
    t0 = time.perf_counter()
    for _ in range(rows):
        rec.record("calls", {**template, "request_id": uuid7()})
    while rec.stats.written < rows and time.perf_counter() - t0 < 120:
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    rec.stop()
    store.close()
    return rows / seconds


async def _ticker(until: float) -> list[float]:
    lags = []
    while time.perf_counter() < until:
        t = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append((time.perf_counter() - t - TICK_S) * 1000)
    return lags


async def _produce(rec: Recorder | None, rate: float, until: float) -> list[float]:
    """Enqueue ``rate`` rows/s in 10 ms slices; returns each record() call's µs."""
    template = call_row()
    costs = []
    t0, sent = time.perf_counter(), 0
    while (now := time.perf_counter()) < until:
        due = int((now - t0) * rate)
        for _ in range(due - sent):
            row = {**template, "request_id": uuid7()}
            t = time.perf_counter()
            if rec is not None:
                rec.record("calls", row)
            costs.append((time.perf_counter() - t) * 1e6)
        sent = due
        await asyncio.sleep(0.01)
    return costs


async def _phase(rec: Recorder | None, rate: float, seconds: float) -> dict[str, float]:
    until = time.perf_counter() + seconds
    lags, costs = await asyncio.gather(_ticker(until), _produce(rec, rate, until))
    return {"loop_lag_p50_ms": round(percentile(lags, 50), 3),
            "loop_lag_p99_ms": round(percentile(lags, 99), 3),
            "record_p99_us": round(percentile(costs, 99), 1), "rows": len(costs)}


def sustained(directory: Path, rate: float, seconds: float) -> dict[str, Any]:
    store, rec = _recorder(directory, "sustained")
    idle = asyncio.run(_phase(None, rate, seconds / 2))
    loaded = asyncio.run(_phase(rec, rate, seconds))
    t0 = time.perf_counter()
    while rec.stats.written < loaded["rows"] and time.perf_counter() - t0 < 30:
        time.sleep(0.01)
    caught_up_ms = (time.perf_counter() - t0) * 1000
    rec.stop()
    store.close()
    return {"rate": rate, "idle": idle, "writing": loaded, "written": rec.stats.written,
            "spilled": rec.stats.spilled, "dropped": rec.stats.dropped,
            "caught_up_ms_after_last_row": round(caught_up_ms, 1)}


def recorder_checks(directory: Path, checks: CheckSink, seconds: float) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    rows_per_s = burst(directory, int(max(SUSTAINED_RATE * seconds, 10_000)))
    checks.add("target: recorder burst throughput >= 5,000 rows/s", rows_per_s >= SUSTAINED_RATE,
               f"{rows_per_s:,.0f} rows/s")
    result = sustained(directory, SUSTAINED_RATE, seconds)
    writing, idle = result["writing"], result["idle"]
    checks.add("target: recorder sustains 5,000 rows/s without spilling or lagging",
               result["written"] == writing["rows"] and result["spilled"] == 0
               and result["caught_up_ms_after_last_row"] < 1000,
               f"{result['written']} of {writing['rows']} written, caught up "
               f"{result['caught_up_ms_after_last_row']} ms after the last row")
    added = writing["loop_lag_p99_ms"] - idle["loop_lag_p99_ms"]
    checks.add("target: writing 5,000 rows/s adds <= 2 ms to event-loop lag p99",
               added <= 2.0, f"p99 {idle['loop_lag_p99_ms']} ms idle -> "
               f"{writing['loop_lag_p99_ms']} ms writing; record() p99 "
               f"{writing['record_p99_us']} µs")
    return {"burst_rows_per_s": round(rows_per_s), **result}
