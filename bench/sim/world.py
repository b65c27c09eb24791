"""Worlds for the learning benchmark: typed model, strict loader, task stream.

The format and the simulated model's rules are in WORLD_SPEC.md. Everything random
about the task with stream index ``i`` comes from ``draw(seed, i, purpose)``, a hash,
so two arms that replay the same world see the same tasks and the same luck
(common random numbers) no matter what else differs between them.

Requests of a phase are split evenly over its days; the first ``requests % days``
days get one task more than the others. Files are read by ``bench.sim.loader``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

SLOT_RE = re.compile(r"\{(\w+)\}")


class WorldError(ValueError):
    """A world file that does not follow WORLD_SPEC.md."""


def draw(seed: int, index: int, purpose: str) -> float:
    """Uniform in [0, 1) derived only from (seed, index, purpose)."""
    digest = hashlib.sha256(f"{seed}|{index}|{purpose}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def pick_weighted(weights: Mapping[str, float], u: float) -> str:
    """Inverse-CDF pick in declaration order, so a given u always maps the same way."""
    items = [(key, w) for key, w in weights.items() if w > 0]
    total = sum(w for _, w in items)
    acc = 0.0
    for key, weight in items:
        acc += weight / total
        if u < acc:
            return key
    return items[-1][0]  # u close to 1 with rounding in acc


def pick_one(options: Sequence[str], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


@dataclass(frozen=True)
class Strategy:
    id: str
    names: tuple[str, ...]
    says: tuple[str, ...]

    @property
    def canonical(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Tables:
    """The per-family tables that drift may replace."""

    prior: Mapping[str, float]
    success: Mapping[str, float]
    success_default: float

    def p_success(self, strategy: str) -> float:
        return self.success.get(strategy, self.success_default)


@dataclass(frozen=True)
class Family:
    id: str
    domain: str
    turns: int
    templates: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]
    tables: Tables


@dataclass(frozen=True)
class Change:
    family: str
    prior: Mapping[str, float] | None = None
    success: Mapping[str, float] | None = None
    success_default: float | None = None

    def apply(self, tables: Tables) -> Tables:
        if self.prior is not None:
            tables = replace(tables, prior=self.prior)
        if self.success is not None:
            tables = replace(tables, success=self.success)
        if self.success_default is not None:
            tables = replace(tables, success_default=self.success_default)
        return tables


@dataclass(frozen=True)
class Phase:
    name: str
    days: int
    requests: int
    mix: Mapping[str, float]
    changes: tuple[Change, ...] = ()

    def day_sizes(self) -> tuple[int, ...]:
        base, extra = divmod(self.requests, self.days)
        return tuple(base + (1 if d < extra else 0) for d in range(self.days))


@dataclass(frozen=True)
class Task:
    index: int  # position in the whole stream; the key of every draw
    phase: str
    phase_index: int
    day: int  # global day number, from 0
    day_in_phase: int  # from 0
    position: int  # position within the phase, from 0
    family: str
    domain: str
    text: str
    turns: int


@dataclass(frozen=True)
class World:
    name: str
    seed: int
    compliance: float
    agent_system_prompt: str | None
    strategies: tuple[Strategy, ...]
    families: tuple[Family, ...]
    phases: tuple[Phase, ...]

    def draw(self, index: int, purpose: str) -> float:
        return draw(self.seed, index, purpose)

    def strategy(self, strategy_id: str) -> Strategy:
        return next(s for s in self.strategies if s.id == strategy_id)

    def family(self, family_id: str) -> Family:
        return next(f for f in self.families if f.id == family_id)

    def phase_index(self, phase_name: str) -> int:
        return next(i for i, p in enumerate(self.phases) if p.name == phase_name)

    def tables(self, family_id: str, phase_name: str) -> Tables:
        """Tables in force: the base ones with every change up to this phase applied."""
        tables = self.family(family_id).tables
        for phase in self.phases[: self.phase_index(phase_name) + 1]:
            for change in phase.changes:
                if change.family == family_id:
                    tables = change.apply(tables)
        return tables

    def best_strategies(self, family_id: str, phase_name: str) -> frozenset[str]:
        """Strategies with the highest success in force; ties are all best."""
        tables = self.tables(family_id, phase_name)
        odds = {s.id: tables.p_success(s.id) for s in self.strategies}
        top = max(odds.values())
        return frozenset(s for s, p in odds.items() if p == top)

    def stream(self) -> tuple[Task, ...]:
        tasks: list[Task] = []
        day = 0
        for phase_index, phase in enumerate(self.phases):
            position = 0
            for day_in_phase, size in enumerate(phase.day_sizes()):
                for _ in range(size):
                    where = (phase_index, day, day_in_phase, position)
                    tasks.append(self._make_task(len(tasks), where))
                    position += 1
                day += 1
        return tuple(tasks)

    def _make_task(self, index: int, where: tuple[int, int, int, int]) -> Task:
        phase_index, day, day_in_phase, position = where
        phase = self.phases[phase_index]
        family = self.family(pick_weighted(phase.mix, self.draw(index, "family")))
        template = pick_one(family.templates, self.draw(index, "template"))

        def fill(match: re.Match[str]) -> str:
            slot = match.group(1)
            return pick_one(family.slots[slot], self.draw(index, f"slot:{slot}"))

        return Task(
            index=index,
            phase=phase.name,
            phase_index=phase_index,
            day=day,
            day_in_phase=day_in_phase,
            position=position,
            family=family.id,
            domain=family.domain,
            text=SLOT_RE.sub(fill, template).strip(),  # the model matches stripped text
            turns=family.turns,
        )


def earliest_named(strategies: Sequence[Strategy], text: str) -> str | None:
    """The strategy whose name occurs first in text (case-insensitive).

    At equal positions the longer name wins, so "greedy first fit" beats "greedy".
    """
    haystack = text.lower()
    best: tuple[int, int, str] | None = None
    for strategy in strategies:
        for name in strategy.names:
            pos = haystack.find(name.lower())
            if pos >= 0 and (best is None or (pos, -len(name)) < best[:2]):
                best = (pos, -len(name), strategy.id)
    return None if best is None else best[2]
