"""The small model yields to serving: the gate on the event loop's lateness."""

from __future__ import annotations

import asyncio
import threading
import time

from proxy.hints.lag import HOLD_S, TICK_S, LagGate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def overload(gate: LagGate) -> None:
    """Ten ticks in a row 50 ms late: the loop is behind, tick after tick."""
    for _ in range(10):
        gate.observe(0.05)


def waiting_worker(gate: LagGate) -> tuple[threading.Thread, threading.Event]:
    """A started worker thread whose job sets the event once the gate gives it a turn."""
    ran = threading.Event()

    def work() -> None:
        with gate.turn():
            ran.set()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    return worker, ran


def test_sustained_lateness_closes_the_gate_and_one_stall_does_not() -> None:
    clock = Clock()
    gate = LagGate(20.0, clock)
    gate.observe(5.0)  # one stall of 5 s counts as twice the threshold, once
    assert gate.is_open
    for _ in range(4):  # ~4 late ticks in a row
        gate.observe(0.05)
    assert not gate.is_open and gate.closes == 1
    assert gate.status()["open"] is False


def test_the_gate_holds_then_reopens_once_the_loop_keeps_time() -> None:
    clock = Clock()
    gate = LagGate(20.0, clock)
    overload(gate)
    assert not gate.is_open
    for _ in range(30):  # on time again, but within the hold
        clock.now += TICK_S
        gate.observe(0.0)
    assert not gate.is_open
    clock.now = HOLD_S
    gate.observe(0.0)
    assert gate.is_open and gate.closes == 1
    assert gate.status()["closed_s"] == HOLD_S


def test_a_worker_waits_while_closed_and_runs_once_open() -> None:
    clock = Clock()
    gate = LagGate(20.0, clock)
    overload(gate)
    worker, ran = waiting_worker(gate)
    try:
        assert not ran.wait(0.2)
        clock.now = HOLD_S
        for _ in range(10):
            gate.observe(0.0)
        assert ran.wait(5)
    finally:
        gate.stop()
    worker.join()


def test_stopping_releases_waiting_workers_for_shutdown() -> None:
    gate = LagGate(20.0, Clock())
    overload(gate)
    worker, released = waiting_worker(gate)
    gate.stop()
    assert released.wait(5)
    gate.observe(1.0)  # samples after the stop change nothing
    assert gate.is_open
    worker.join()


def test_a_real_loop_that_runs_late_closes_the_gate_and_reopens_it() -> None:
    """On a real asyncio loop: callbacks that hog it for 50 ms at a time make every tick
    late; once they stop, the gate reopens after the hold."""
    gate = LagGate(20.0)

    async def scenario() -> tuple[bool, bool, bool]:
        watcher = asyncio.create_task(gate.watch())
        await asyncio.sleep(0.1)
        on_time = gate.is_open
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            time.sleep(0.05)  # the loop is busy: serving's work, as under overload
            await asyncio.sleep(0)
        closed = not gate.is_open
        deadline = time.monotonic() + HOLD_S + 3
        while not gate.is_open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        watcher.cancel()
        return on_time, closed, gate.is_open

    on_time, closed, reopened = asyncio.run(scenario())
    assert on_time and closed and reopened
    assert gate.closes == 1 and gate.status()["closed_s"] >= HOLD_S


def test_jobs_take_turns_and_a_threshold_of_zero_never_closes() -> None:
    gate = LagGate(0.0)
    for _ in range(10):
        gate.observe(5.0)
    assert gate.is_open and gate.closes == 0
    inside, overlap = [0], []

    def job() -> None:
        with gate.turn():
            inside[0] += 1
            overlap.append(inside[0])
            time.sleep(0.02)
            inside[0] -= 1

    workers = [threading.Thread(target=job) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert overlap == [1, 1, 1, 1]  # never two at once
