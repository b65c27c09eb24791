"""The small model yields to serving: one job at a time, none while the loop runs late.

The small model's two contexts (labels, embeddings) each run ``batch_threads`` threads.
On a small machine, under more traffic than they can keep up with, they ran all the
time, together, and took the cores the event loop needs to serve: on 2 cores at 500
novel tasks/s the guided proxy answered in 2.5 s at p95, where without the embeddings it
kept up (docs/benchmarks.md, "The small model yields to serving"). Two rules fix that:

- The contexts take turns (``turn``): one job at a time across both, so their threads
  never ask for twice the cores; a label waits for an embedding under way (~60-80 ms).
- A late event loop is the symptom that matters, so it is the signal: a timer on the
  loop measures how late it fires; while its smoothed lag is over
  ``guidance.yield_lag_ms`` (0: never), the small model starts no new job and guided
  calls that would wait for it go unguided (fail open). A sample counts at most twice
  the threshold, so one stall (a collection, a slow disk) does not close the gate: it
  takes lateness sustained over several ticks. It reopens once the lag has fallen under
  half the threshold, and not sooner than ``HOLD_S`` after it closed, so that it does
  not flap at the rate of a job. A job under way finishes first. Where the cores
  suffice the loop keeps time and the gate stays open (it never closed through a
  learning benchmark run here).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

TICK_S = 0.01  # how often the loop's lateness is sampled
SMOOTHING = 0.2  # weight of the newest sample: ~50 ms of memory
HOLD_S = 1.0  # once closed, at least this long: a burst lasts seconds, a job ~0.1 s


class LagGate:
    def __init__(self, threshold_ms: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold_s = threshold_ms / 1000
        self._clock = clock
        self._open = threading.Event()
        self._open.set()
        self._turn = threading.Lock()
        self._lag_s = 0.0
        self._closed_at: float | None = None
        self._stopped = False
        self.closes = 0
        self.closed_s = 0.0  # total time closed, for the stats

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """For a worker thread's job: once the gate is open (or stopped), and one job
        at a time across the small model's contexts, whose threads together would
        otherwise ask for twice the cores."""
        self._open.wait()
        with self._turn:
            yield

    def observe(self, lag_s: float) -> None:
        """One sample of the loop's lateness; closes or opens the gate. Loop only."""
        if self._stopped or self.threshold_s <= 0:
            return
        sample = min(max(lag_s, 0.0), 2 * self.threshold_s)
        self._lag_s += SMOOTHING * (sample - self._lag_s)
        now = self._clock()
        if self._closed_at is None:
            if self._lag_s > self.threshold_s:
                self._closed_at = now
                self.closes += 1
                self._open.clear()
        elif now - self._closed_at >= HOLD_S and self._lag_s < self.threshold_s / 2:
            self.closed_s += now - self._closed_at
            self._closed_at = None
            self._open.set()

    async def watch(self) -> None:
        """Sample the loop's lateness until cancelled (a task on the serving loop)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            self.observe(loop.time() - due)

    def stop(self) -> None:
        """Open for good: workers waiting on the gate finish, so they can be shut down."""
        self._stopped = True
        self._open.set()

    def status(self) -> dict[str, Any]:
        closed_now = self._clock() - self._closed_at if self._closed_at is not None else 0.0
        return {"open": self.is_open, "lag_ms": round(self._lag_s * 1000, 2),
                "closes": self.closes, "closed_s": round(self.closed_s + closed_now, 3)}
