"""The nightly job's threads follow the proxy's traffic: idle cores are used, busy ones
given back. The proxy side is a real server on loopback; the policy is checked against
a scripted probe and clock."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

import httpx

from learner.pace import POLL_S, Pace, proxy_idle_seconds
from proxy.config import Config, LearnerConfig
from tests.conftest import ProxyHandle

MSGS = [{"role": "user", "content": "hi"}]


def config(**learner: object) -> Config:
    return Config(learner=LearnerConfig(**learner))  # type: ignore[arg-type]


class Script:
    """A probe answering from a list, and a clock moved by hand."""

    def __init__(self, answers: list[float | None]) -> None:
        self.answers = answers
        self.asked = 0
        self.now = 0.0

    def probe(self) -> float | None:
        self.asked += 1
        return self.answers.pop(0)

    def clock(self) -> float:
        return self.now


def test_idle_cores_are_used_and_given_back_when_traffic_returns() -> None:
    s = Script([float("inf"), 45.0, 3.0, 0.0, None, 31.0])
    pace = Pace(config(threads=1, idle_threads=2, idle_after_seconds=30), s.probe, s.clock)
    assert pace.threads() == 2  # no proxy listening: nothing to slow down
    s.now += POLL_S / 2
    assert pace.threads() == 2 and s.asked == 1  # within a poll: not asked again
    for expected in (2, 1, 1, 1, 2):  # 45 s idle; 3 s; a call in flight; no answer; 31 s
        s.now += POLL_S
        assert pace.threads() == expected
    assert s.asked == 6


def test_no_idle_threads_beyond_busy_ones_means_never_asking() -> None:
    s = Script([])
    for cfg in (config(threads=2, idle_threads=1), config(threads=1, idle_threads=1)):
        pace = Pace(cfg, s.probe, s.clock)
        assert pace.busy_threads == pace.idle_threads == cfg.learner.threads
        assert pace.threads() == cfg.learner.threads
    assert s.asked == 0


def test_default_idle_threads_are_the_usable_cores() -> None:
    import os

    pace = Pace(config(), lambda: 0.0)
    assert pace.idle_threads == max(1, len(os.sched_getaffinity(0)))


def listening_at(proxy: ProxyHandle) -> Config:
    where = urlsplit(proxy.url)
    return replace(proxy.config, listen=f"{where.hostname}:{where.port}")


def test_proxy_reports_its_traffic_and_the_learner_reads_it(
        make_proxy: Callable[..., ProxyHandle]) -> None:
    proxy = make_proxy()
    cfg = listening_at(proxy)
    slow = threading.Thread(target=lambda: httpx.post(
        f"{proxy.base_url}/chat/completions", json={"model": "slow-1500", "messages": MSGS},
        timeout=10))
    slow.start()
    deadline = time.monotonic() + 5
    while (traffic := httpx.get(f"{proxy.url}/healthz").json()["traffic"])["in_flight"] == 0:
        assert time.monotonic() < deadline, "the slow call never showed as in flight"
        time.sleep(0.02)
    assert traffic == {"in_flight": 1, "idle_seconds": 0.0}
    assert proxy_idle_seconds(cfg) == 0.0
    slow.join()
    time.sleep(0.3)
    traffic = httpx.get(f"{proxy.url}/healthz").json()["traffic"]
    assert traffic["in_flight"] == 0 and 0.3 <= traffic["idle_seconds"] < 5
    assert 0.3 <= (proxy_idle_seconds(cfg) or 0.0) < 5
    # A proxy that has been quiet long enough frees the learner's idle threads.
    pace = Pace(replace(cfg, learner=LearnerConfig(threads=1, idle_threads=3,
                                                   idle_after_seconds=0.2)))
    assert pace.threads() == 3


def test_nothing_listening_counts_as_idle() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        assert proxy_idle_seconds(replace(Config(), listen=f"127.0.0.1:{port}")) == float("inf")
