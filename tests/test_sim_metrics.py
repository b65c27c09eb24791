"""Metrics on hand-built logs, checked against values worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from bench.sim import World, world_from_data
from bench.sim.metrics import (
    ArmLog,
    NightlyJob,
    compute,
    new_domains,
    percentile,
    reachable_accuracy,
)
from bench.sim.model import Decision, TaskRecord, task_record

# One family per phase so every task's family is known without the hash:
# p1 f1 (0-3), p2 f2 (4-7, changed so a is best), p3 f3 in a new domain (8-11,
# two turns), p4 f1 again (12-15). Best: f1 a, f2 a (from p2), f3 c.
WORLD = yaml.safe_load(
    """
name: hand
seed: 1
compliance: 1
strategies:
  - {id: a, names: ["alpha"], says: ["alpha"]}
  - {id: b, names: ["beta"], says: ["beta"]}
  - {id: c, names: ["gamma"], says: ["gamma"]}
families:
  - {id: f1, domain: d1, templates: ["one {n}"], slots: {n: ["1", "2", "3", "4"]},
     prior: {b: 1}, success: {a: 0.9, b: 0.1}}
  - {id: f2, domain: d1, templates: ["two {n}"], slots: {n: ["1", "2", "3", "4"]},
     prior: {b: 1}, success: {a: 0.2, b: 0.8}}
  - {id: f3, domain: d2, turns: 2, templates: ["three {n}"], slots: {n: ["1", "2", "3", "4"]},
     prior: {a: 1}, success: {c: 0.9, a: 0.5}}
phases:
  - {name: p1, days: 2, requests: 4, mix: {f1: 1}}
  - {name: p2, days: 2, requests: 4, mix: {f2: 1}, changes: {f2: {success: {a: 0.9, b: 0.2}}}}
  - {name: p3, days: 2, requests: 4, mix: {f3: 1}}
  - {name: p4, days: 1, requests: 4, mix: {f1: 1}}
"""
)

T, F = True, False
CONTROL_SUCCESS = [T, F, F, F, F, F, T, F, T, F, F, F, T, T, F, T]
GUIDED_NAMED = [None, None, "a", "b", "b", "b", "a", "a", "c", "a", "c", "c", "a", "a", "b", None]
GUIDED_SUCCESS = [T, F, T, F, F, T, T, T, T, T, T, F, T, T, F, T]


def record(
    world: World, index: int, named: str | None, success: bool, turns_seen: int | None = None
) -> TaskRecord:
    task = world.stream()[index]
    decision = Decision(named, named is not None, named or "b", success)
    return task_record(task, "" if named is None else named, decision,
                       task.turns if turns_seen is None else turns_seen)


@pytest.fixture(scope="module")
def world() -> World:
    built = world_from_data(WORLD)
    assert [t.family for t in built.stream()] == ["f1"] * 4 + ["f2"] * 4 + ["f3"] * 4 + ["f1"] * 4
    return built


@pytest.fixture(scope="module")
def logs(world: World) -> tuple[ArmLog, ArmLog]:
    # Control never delivered task 15; task 9's episode stopped after one of two turns.
    control = ArmLog(
        records=[record(world, i, None, CONTROL_SUCCESS[i]) for i in range(15)],
        call_ms={(i, 0): 100.0 for i in range(15)},
    )
    guided = ArmLog(
        records=[
            record(world, i, GUIDED_NAMED[i], GUIDED_SUCCESS[i], 1 if i == 9 else None)
            for i in range(16)
        ],
        call_ms={**{(i, 0): 100.0 + i for i in range(16)}, (8, 1): 999.0},
        nightly=[NightlyJob("p1", 0, 1.5), NightlyJob("p1", 1, 2.5), NightlyJob("p4", 0, 3.0)],
    )
    return control, guided


def test_success_and_uplift(world: World, logs: tuple[ArmLog, ArmLog]) -> None:
    report = compute(world, *logs)
    phases = {m.scope: m for m in report.phases}
    assert [phases[p].control_success for p in ["p1", "p2", "p3", "p4"]] == [0.25, 0.25, 0.25, 0.5]
    assert [phases[p].guided_success for p in ["p1", "p2", "p3", "p4"]] == [0.5, 0.75, 0.5, 0.75]
    assert [phases[p].uplift for p in ["p1", "p2", "p3", "p4"]] == [1.0, 2.0, 1.0, 0.5]
    assert report.overall.control_success == 5 / 16
    assert report.overall.guided_success == 10 / 16
    assert report.overall.uplift == pytest.approx((8 / 12 - 4 / 12) / (4 / 12))
    assert report.overall.tasks == 16


def test_coverage_and_accuracy(world: World, logs: tuple[ArmLog, ArmLog]) -> None:
    report = compute(world, *logs)
    assert [m.coverage for m in report.phases] == [0.5, 1.0, 1.0, 0.75]
    assert [m.accuracy for m in report.phases] == [0.5, 0.5, 0.75, pytest.approx(2 / 3)]
    assert report.overall.coverage == 13 / 16
    assert report.overall.accuracy == 8 / 13


def test_transfer_retention_adaptation(world: World, logs: tuple[ArmLog, ArmLog]) -> None:
    report = compute(world, *logs)
    assert [m.transfer for m in report.phases] == [None, None, 0.5, None]
    assert report.overall.transfer == 0.5
    # p4 accuracy on f1 is 2/3; on p1's last day (tasks 2, 3) it was 1/2.
    assert [m.retention for m in report.phases] == [None, None, None, pytest.approx(4 / 3)]
    assert report.overall.retention == pytest.approx(4 / 3)
    assert [m.adaptation for m in report.phases] == [{}, {"f2@p2": 1.0}, {}, {}]
    assert report.overall.adaptation == {"f2@p2": 1.0}


def test_latency_and_retrain(world: World, logs: tuple[ArmLog, ArmLog]) -> None:
    report = compute(world, *logs)
    first = report.phases[0].hint_latency_ms
    assert (first.calls, first.p50) == (4, 1.5)
    assert first.p95 == pytest.approx(2.85)
    overall = report.overall.hint_latency_ms
    assert (overall.calls, overall.p50) == (15, 7.0)
    assert overall.p95 == pytest.approx(13.3)
    assert report.phases[0].retrain_seconds == (1.5, 2.5)
    assert report.phases[1].retrain_seconds == ()
    assert report.overall.retrain_seconds == (1.5, 2.5, 3.0)


def test_empty_and_degenerate_inputs(world: World) -> None:
    report = compute(world, ArmLog([]), ArmLog([]))
    assert report.overall.tasks == 0
    assert report.overall.control_success is None and report.overall.uplift is None
    assert report.overall.hint_latency_ms.p50 is None
    failing = ArmLog([record(world, 4, None, False)])
    assert compute(world, failing, failing).phases[1].uplift is None  # control success 0
    assert percentile([5.0], 0.95) == 5.0
    with pytest.raises(ValueError, match="lacks"):
        compute(world, ArmLog([replace(record(world, 3, None, True), index=99)]), ArmLog([]))


def test_reachable_accuracy_counts_only_best_strategies_the_model_has_used() -> None:
    # f1's best (a) is in no prior until f3 arrives in p3; f2's and f3's never are.
    world = world_from_data(WORLD)
    assert reachable_accuracy(world) == {"p1": 0.0, "p2": 0.0, "p3": 0.0, "p4": 1.0,
                                         "overall": 0.25}


def test_new_domains_are_those_no_earlier_phase_had(world: World) -> None:
    assert new_domains(world, 0) == {"d1"}
    assert new_domains(world, 1) == set()
    assert new_domains(world, 2) == {"d2"}
    assert new_domains(world, 3) == set()  # d1 again: not new
