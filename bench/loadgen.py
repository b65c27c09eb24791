"""Open-loop and closed-loop HTTP/1.1 load on raw asyncio streams, with honest timing.

Open loop: request ``i`` is *due* at ``t0 + i / rate`` whether or not earlier ones
have answered, and its latency is measured from when it was due, not from when it was
sent, so a stalled server is charged for the queue it builds (no coordinated
omission). ``lag`` (sent − due) shows whether the generator itself kept up; the run's
own CPU time is reported too. Closed loop (``concurrency`` workers back to back) is
for the concurrency-1 numbers.

Requests are prebuilt bytes. Responses are parsed just enough to time the first body
byte (TTFB: the first SSE event for a stream) and the end, and to keep the status and
``x-request-id``. ``hangup`` makes a client leave early: right after sending
(``sent``) or after the first body byte (``first_byte``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.http1 import parse_headers
from bench.sim.metrics import percentile as fraction_percentile

CLIENT_TIMEOUT_S = 10.0
# One bearer key for every target: the LiteLLM proxy requires its master key, the mock
# and Tactician pass it through unchecked.
BENCH_KEY = "sk-bench-5f2c8e1a9b7d4c3e6f0a1b2c3d4e5f60"


@dataclass(frozen=True)
class Request:
    raw: bytes
    hangup: str | None = None  # None | "sent" | "first_byte"
    tag: str = ""


@dataclass
class Sample:
    due: float
    sent: float = math.nan
    first_byte: float = math.nan
    done: float = math.nan
    status: int = 0  # 0: no HTTP answer (connection error, timeout, our own hang-up)
    error: str | None = None
    request_id: str | None = None
    body: bytes = b""
    tag: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    @property
    def latency_ms(self) -> float:
        return (self.done - self.due) * 1000

    @property
    def ttfb_ms(self) -> float:
        return (self.first_byte - self.due) * 1000


def build_request(path: str, body: bytes, headers: dict[str, str] | None = None,
                  method: str = "POST", host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", "content-type: application/json",
             f"content-length: {len(body)}", f"authorization: Bearer {BENCH_KEY}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self, graceful: bool = False) -> None:
        # A client that hangs up sends FIN, so the request it wrote still arrives; a
        # failed connection is reset.
        if graceful:
            self.writer.close()
        else:
            self.writer.transport.abort()


class Pool:
    """Keep-alive connections to one server; at most ``max_conns`` at once (more
    requests wait, which an open-loop latency counts)."""

    def __init__(self, port: int, host: str = "127.0.0.1", max_conns: int = 1024) -> None:
        self.host, self.port = host, port
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_conns)
        self.opened = 0

    async def request(self, req: Request, sample: Sample,
                      timeout_s: float = CLIENT_TIMEOUT_S) -> None:
        async with self._slots:
            conn: _Conn | None = None
            try:
                async with asyncio.timeout(timeout_s):
                    conn = self._idle.pop() if self._idle else await self._open()
                    sample.sent = time.perf_counter()
                    conn.writer.write(req.raw)
                    reusable = await _exchange(conn, req, sample)
                if reusable:
                    self._idle.append(conn)
                    conn = None
            except TimeoutError:
                sample.error = "timeout"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                sample.error = sample.error or type(exc).__name__
            finally:
                sample.done = time.perf_counter()
                if conn is not None:
                    conn.close(graceful=sample.error == "hung up")

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.opened += 1
        return _Conn(reader, writer)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _exchange(conn: _Conn, req: Request, sample: Sample) -> bool:
    """Read one response into ``sample``; True when the connection can be reused."""
    if req.hangup == "sent":
        await conn.writer.drain()
        sample.error = "hung up"
        return False
    head = await conn.reader.readuntil(b"\r\n\r\n")
    status_line, _, block = head.partition(b"\r\n")
    sample.status = int(status_line.split(b" ", 2)[1])
    headers = parse_headers(block)
    sample.request_id = headers.get("x-request-id")
    if "content-length" in headers:
        size = int(headers["content-length"])
        sample.first_byte = time.perf_counter()
        sample.body = await conn.reader.readexactly(size) if size else b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        if not await _read_chunked(conn.reader, req, sample):
            return False
    else:
        sample.first_byte = time.perf_counter()
        sample.body = await conn.reader.read()
        return False
    return headers.get("connection", "").lower() != "close"


async def _read_chunked(reader: asyncio.StreamReader, req: Request, sample: Sample) -> bool:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            sample.body = b"".join(parts)
            return True
        if math.isnan(sample.first_byte):
            sample.first_byte = time.perf_counter()
            if req.hangup == "first_byte":
                sample.error = "hung up"
                return False
        parts.append(data[:-2])


@dataclass
class Run:
    samples: list[Sample]
    seconds: float
    cpu_seconds: float  # this process's CPU while the run lasted (generator cost)
    connections: int
    offered_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def open_loop(port: int, make: Callable[[int], Request], rate: float, seconds: float,
                    timeout_s: float = CLIENT_TIMEOUT_S, max_conns: int = 1024) -> Run:
    """``rate`` requests per second for ``seconds``, on schedule, then wait for all."""
    pool = Pool(port, max_conns=max_conns)
    n = max(1, int(rate * seconds))
    cpu0, t0 = time.process_time(), time.perf_counter() + 0.005
    tasks: list[asyncio.Task[None]] = []
    samples: list[Sample] = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        req = make(i)
        sample = Sample(due=due, tag=req.tag)
        samples.append(sample)
        tasks.append(asyncio.create_task(pool.request(req, sample, timeout_s)))
    await asyncio.gather(*tasks)
    pool.close()
    return Run(samples, time.perf_counter() - t0, time.process_time() - cpu0, pool.opened,
               offered_rate=rate)


async def closed_loop(port: int, make: Callable[[int], Request], concurrency: int,
                      seconds: float, timeout_s: float = CLIENT_TIMEOUT_S) -> Run:
    """``concurrency`` clients, each sending its next request when the last ends."""
    pool = Pool(port, max_conns=concurrency)
    samples: list[Sample] = []
    counter = iter(range(1 << 62))
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            req = make(next(counter))
            sample = Sample(due=time.perf_counter(), tag=req.tag)
            samples.append(sample)
            await pool.request(req, sample, timeout_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    pool.close()
    return Run(samples, time.perf_counter() - t0, time.process_time() - cpu0, pool.opened)


def percentile(values: Sequence[float], q: float) -> float:
    """``q`` in percent; NaN for no values, so it rounds and formats like a number."""
    value = fraction_percentile(values, q / 100)
    return math.nan if value is None else value


def summarize(samples: Sequence[Sample], seconds: float | None = None) -> dict[str, Any]:
    """Latency and TTFB percentiles (ms) over the answered requests, plus error counts."""
    ok = [s for s in samples if s.ok]
    lat = [s.latency_ms for s in ok]
    ttfb = [s.ttfb_ms for s in ok if not math.isnan(s.first_byte)]
    lag = [(s.sent - s.due) * 1000 for s in samples if not math.isnan(s.sent)]
    errors = len(samples) - len(ok)
    out: dict[str, Any] = {"n": len(samples), "errors": errors,
                           "error_rate": errors / len(samples) if samples else 0.0}
    for name, values in (("latency", lat), ("ttfb", ttfb)):
        for q in (50, 95, 99):
            out[f"{name}_p{q}"] = round(percentile(values, q), 3)
    out["latency_max"] = round(max(lat), 3) if lat else math.nan
    out["lag_p99"] = round(percentile(lag, 99), 3)
    if seconds:
        out["throughput"] = round(len(ok) / seconds, 1)
    return out


def run_sync(coro: Any) -> Any:
    """Run one load coroutine on a fresh loop (uvloop when installed)."""
    with contextlib.suppress(ImportError):
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)
