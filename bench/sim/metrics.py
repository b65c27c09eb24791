"""The benchmark's metrics (WORLD_SPEC.md, "The metrics"): pure functions of two arms' logs.

Readings of the spec where it leaves room, chosen so that no arm can gain by losing calls:

* The tasks of a scope are those the model saw in either arm. A task an arm never
  delivered counts there as failed and as not naming a strategy. A multi-turn task
  succeeds only if all its turns reached the model (``TaskRecord.succeeded``).
* ``uplift`` of a phase is that phase alone; overall it is pooled over every phase but
  the first. A control success of 0 leaves it undefined (None), as is any ratio whose
  denominator is empty.
* ``transfer`` skips the first phase: every domain is new there and the learner has not
  trained on anything, so there is nothing to transfer. Overall it pools the rest.
* ``retention`` of a later phase is its accuracy on the stable first-phase families (the
  success table in force never changes) over their accuracy on the first phase's last
  day; overall it is the last phase's value.
* ``adaptation`` is keyed ``family@phase``; the second half of a phase is the tasks at
  position >= requests / 2 within it (with an even number of days: the later days).
* ``hint_latency_ms`` pairs each call ``(index, turn)`` timed in both arms and takes
  guided minus control; percentiles interpolate linearly between ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.sim.model import TaskRecord
from bench.sim.world import Phase, Task, World


@dataclass(frozen=True)
class NightlyJob:
    phase: str
    day_in_phase: int
    seconds: float


@dataclass(frozen=True)
class ArmLog:
    """One arm: what the model saw, the harness's timing of each call, nightly jobs."""

    records: Sequence[TaskRecord]
    call_ms: Mapping[tuple[int, int], float] = field(default_factory=dict)  # (index, turn)
    nightly: Sequence[NightlyJob] = ()


@dataclass(frozen=True)
class Latency:
    calls: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class Metrics:
    scope: str  # a phase name, or "overall"
    tasks: int
    control_success: float | None
    guided_success: float | None
    uplift: float | None
    coverage: float | None
    accuracy: float | None
    transfer: float | None
    retention: float | None
    adaptation: dict[str, float | None]
    hint_latency_ms: Latency
    retrain_seconds: tuple[float, ...]


@dataclass(frozen=True)
class Report:
    world: str
    overall: Metrics
    phases: tuple[Metrics, ...]


@dataclass(frozen=True)
class _Run:
    world: World
    tasks: Mapping[int, Task]
    control: Mapping[int, TaskRecord]
    guided: Mapping[int, TaskRecord]
    control_log: ArmLog
    guided_log: ArmLog

    def indices(self, phases: Iterable[int]) -> list[int]:
        wanted = set(phases)
        seen = self.control.keys() | self.guided.keys()
        return sorted(i for i in seen if self.tasks[i].phase_index in wanted)


def ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else numerator / denominator


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def success_rate(arm: Mapping[int, TaskRecord], indices: Sequence[int]) -> float | None:
    wins = sum(1 for i in indices if i in arm and arm[i].succeeded)
    return ratio(wins, len(indices))


def uplift(run: _Run, indices: Sequence[int]) -> float | None:
    control = success_rate(run.control, indices)
    guided = success_rate(run.guided, indices)
    if control is None or guided is None:
        return None
    return ratio(guided - control, control)


def coverage(run: _Run, indices: Sequence[int]) -> float | None:
    named = sum(1 for i in indices if i in run.guided and run.guided[i].named is not None)
    return ratio(named, len(indices))


def names_best(world: World, record: TaskRecord) -> bool:
    """Whether the first strategy the task's system prompt named is a best one."""
    return record.named in world.best_strategies(record.family, record.phase)


def accuracy(run: _Run, indices: Iterable[int]) -> float | None:
    named = [run.guided[i] for i in indices if i in run.guided and run.guided[i].named is not None]
    hits = sum(1 for r in named if names_best(run.world, r))
    return ratio(hits, len(named))


def new_domains(world: World, phase_index: int) -> set[str]:
    """Domains in the phase's mix that no earlier phase's mix had."""

    def domains(phases: Iterable[Phase]) -> set[str]:
        return {world.family(f).domain for p in phases for f, w in p.mix.items() if w > 0}

    return domains(world.phases[phase_index:phase_index + 1]) - domains(
        world.phases[:phase_index])


def transfer_domains(world: World, phase_index: int) -> set[str]:
    """The domains whose first-day tasks count for transfer in the phase: those no
    earlier phase's mix had (none in the first phase, where every domain is new)."""
    return new_domains(world, phase_index) if phase_index > 0 else set()


def is_transfer_task(task: Task | TaskRecord, domains: set[str]) -> bool:
    """A first-day task of one of its phase's ``transfer_domains``."""
    return task.day_in_phase == 0 and task.domain in domains


def transfer_indices(run: _Run, phase_index: int) -> list[int]:
    """First-day tasks of families whose domain no earlier phase's mix had."""
    domains = transfer_domains(run.world, phase_index)
    return [i for i in run.indices([phase_index]) if is_transfer_task(run.tasks[i], domains)]


def stable_first_families(world: World) -> set[str]:
    """First-phase families whose success table in force is the same in every phase."""
    first = world.phases[0]
    stable = set()
    for family, weight in first.mix.items():
        tables = [world.tables(family, p.name) for p in world.phases]
        if weight > 0 and all(
            (t.success, t.success_default) == (tables[0].success, tables[0].success_default)
            for t in tables
        ):
            stable.add(family)
    return stable


def retention(run: _Run, phase_index: int) -> float | None:
    if phase_index == 0:
        return None
    families = stable_first_families(run.world)
    last_day = run.world.phases[0].days - 1
    base_idx = [i for i in run.indices([0]) if run.tasks[i].day_in_phase == last_day]
    base = accuracy(run, [i for i in base_idx if run.tasks[i].family in families])
    now = accuracy(run, [i for i in run.indices([phase_index]) if run.tasks[i].family in families])
    if base is None or now is None:
        return None
    return ratio(now, base)


def adaptation(run: _Run, phase_index: int) -> dict[str, float | None]:
    phase = run.world.phases[phase_index]
    late = [i for i in run.indices([phase_index]) if 2 * run.tasks[i].position >= phase.requests]
    return {
        f"{change.family}@{phase.name}": accuracy(
            run, [i for i in late if run.tasks[i].family == change.family]
        )
        for change in phase.changes
    }


def hint_latency(run: _Run, indices: Iterable[int]) -> Latency:
    wanted = set(indices)
    control, guided = run.control_log.call_ms, run.guided_log.call_ms
    added = [guided[k] - control[k] for k in guided.keys() & control.keys() if k[0] in wanted]
    return Latency(len(added), percentile(added, 0.50), percentile(added, 0.95))


def retrain_seconds(run: _Run, phases: Iterable[str]) -> tuple[float, ...]:
    wanted = set(phases)
    return tuple(job.seconds for job in run.guided_log.nightly if job.phase in wanted)


def phase_metrics(run: _Run, phase_index: int) -> Metrics:
    name = run.world.phases[phase_index].name
    indices = run.indices([phase_index])
    return Metrics(
        scope=name,
        tasks=len(indices),
        control_success=success_rate(run.control, indices),
        guided_success=success_rate(run.guided, indices),
        uplift=uplift(run, indices),
        coverage=coverage(run, indices),
        accuracy=accuracy(run, indices),
        transfer=accuracy(run, transfer_indices(run, phase_index)),
        retention=retention(run, phase_index),
        adaptation=adaptation(run, phase_index),
        hint_latency_ms=hint_latency(run, indices),
        retrain_seconds=retrain_seconds(run, [name]),
    )


def overall_metrics(run: _Run) -> Metrics:
    count = len(run.world.phases)
    indices = run.indices(range(count))
    adapt: dict[str, float | None] = {}
    for p in range(count):
        adapt.update(adaptation(run, p))
    return Metrics(
        scope="overall",
        tasks=len(indices),
        control_success=success_rate(run.control, indices),
        guided_success=success_rate(run.guided, indices),
        uplift=uplift(run, run.indices(range(1, count))),
        coverage=coverage(run, indices),
        accuracy=accuracy(run, indices),
        transfer=accuracy(run, [i for p in range(1, count) for i in transfer_indices(run, p)]),
        retention=retention(run, count - 1),
        adaptation=adapt,
        hint_latency_ms=hint_latency(run, indices),
        retrain_seconds=retrain_seconds(run, [p.name for p in run.world.phases]),
    )


def compute(world: World, control: ArmLog, guided: ArmLog) -> Report:
    """Every metric of the spec, per phase and over the whole run."""
    tasks = {t.index: t for t in world.stream()}
    for record in [*control.records, *guided.records]:
        if record.index not in tasks:
            raise ValueError(f"record for task {record.index}, which world {world.name!r} lacks")
    run = _Run(
        world=world,
        tasks=tasks,
        control={r.index: r for r in control.records},
        guided={r.index: r for r in guided.records},
        control_log=control,
        guided_log=guided,
    )
    phases = tuple(phase_metrics(run, p) for p in range(len(world.phases)))
    return Report(world=world.name, overall=overall_metrics(run), phases=phases)


def reachable_accuracy(world: World) -> dict[str, float]:
    """Not a spec metric; context for reading ``accuracy``. Per phase and overall, the
    share of tasks whose best strategy the model has by then used unprompted somewhere
    (it is in the prior of a family seen so far). Nothing learned from traffic can name
    a strategy the model never used, so at full coverage this caps accuracy."""
    stream = world.stream()
    seen: set[str] = set()
    out: dict[str, float] = {}
    hits = total = 0
    for phase in world.phases:
        tasks = [t for t in stream if t.phase == phase.name]
        for family in {t.family for t in tasks}:
            seen |= {s for s, p in world.tables(family, phase.name).prior.items() if p > 0}
        ok = sum(bool(world.best_strategies(t.family, t.phase) & seen) for t in tasks)
        out[phase.name] = ok / len(tasks) if tasks else 0.0
        hits, total = hits + ok, total + len(tasks)
    out["overall"] = hits / total if total else 0.0
    return out
