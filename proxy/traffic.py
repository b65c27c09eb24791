"""How busy the proxy is: calls in flight and how long since the last one ended.

The nightly learner reads it (``/healthz``) to use the cores a quiet proxy leaves free
and to give them back when traffic returns. Touched only on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Traffic:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._in_flight = 0
        # A proxy that has served nothing yet has been idle since it started.
        self._last_end = clock()

    def begin(self) -> None:
        self._in_flight += 1

    def end(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._last_end = self._clock()

    def status(self) -> dict[str, Any]:
        idle = 0.0 if self._in_flight else self._clock() - self._last_end
        return {"in_flight": self._in_flight, "idle_seconds": round(idle, 3)}
