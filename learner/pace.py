"""How many threads the nightly job may use right now.

``learner.threads`` (1 by default) keeps a core for the proxy while it serves. A nightly
run mostly happens while nobody is asking for anything; then the cores serving would
need sit unused, and on a 2-core machine training and scoring take ~1.5x as long as
they must. So while the proxy reports no call in flight and none for
``learner.idle_after_seconds``, or no proxy is listening at all, the run uses
``learner.idle_threads``; when traffic returns it is back to ``learner.threads`` within
one poll and one training step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from proxy.config import Config

POLL_S = 10.0
PROBE_TIMEOUT_S = 0.5  # a proxy too busy to answer this fast is busy

# Seconds since the proxy last served a call (0 while one is in flight), or None when
# its state cannot be told.
Probe = Callable[[], float | None]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def proxy_url(config: Config, path: str) -> str:
    host = config.host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a listen address, not a bind
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}{path}"


def proxy_idle_seconds(config: Config) -> float | None:
    """What the proxy at ``config.listen`` says; infinity when nothing listens there
    (nothing is being served), None when it does not answer in time or makes no sense
    (count that as busy)."""
    import httpx  # noqa: PLC0415

    try:
        resp = httpx.get(proxy_url(config, "/healthz"), timeout=PROBE_TIMEOUT_S)
        return float(resp.json()["traffic"]["idle_seconds"])
    except httpx.ConnectError:
        return float("inf")
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


class Pace:
    """Threads for the next piece of work; asks the proxy at most every ``POLL_S``."""

    def __init__(self, config: Config, probe: Probe | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        cfg = config.learner
        self.busy_threads = cfg.threads
        self.idle_threads = max(cfg.threads, cfg.idle_threads or usable_cores())
        self.idle_after = cfg.idle_after_seconds
        self._probe = probe or (lambda: proxy_idle_seconds(config))
        self._clock = clock
        self._asked: float | None = None
        self._threads = self.busy_threads

    def threads(self) -> int:
        now = self._clock()
        if self.idle_threads > self.busy_threads and (
                self._asked is None or now - self._asked >= POLL_S):
            self._asked = now
            idle = self._probe()
            self._threads = (self.idle_threads if idle is not None and idle >= self.idle_after
                             else self.busy_threads)
        return self._threads
