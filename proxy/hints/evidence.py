"""Outcome evidence per strategy among similar past tasks.

Recent outcomes weigh more than old ones (by rank among the neighbours, so a rarely
seen kind of task does not lose its memory just because other traffic went by), which
lets the recommendation follow a change in what works without forgetting kinds of task
that stay the same.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    sid: str
    success: float  # 1.0 success, 0.0 failure, or a score in between
    similarity: float
    seq: int  # larger = more recent


@dataclass
class StrategyStats:
    sid: str
    n: int = 0
    wins: float = 0.0
    weight: float = 0.0
    weighted_wins: float = 0.0

    @property
    def mean(self) -> float:
        """Posterior mean success under a uniform Beta(1, 1) prior, weighted."""
        return (self.weighted_wins + 1.0) / (self.weight + 2.0)


def summarize(observations: list[Observation], half_life: float) -> dict[str, StrategyStats]:
    stats: dict[str, StrategyStats] = {}
    ranked = sorted(observations, key=lambda o: o.seq, reverse=True)
    for rank, obs in enumerate(ranked):
        w = obs.similarity * 0.5 ** (rank / half_life) if half_life > 0 else obs.similarity
        s = stats.setdefault(obs.sid, StrategyStats(obs.sid))
        s.n += 1
        s.wins += obs.success
        s.weight += w
        s.weighted_wins += w * obs.success
    return stats


def best(stats: dict[str, StrategyStats], min_evidence: int) -> StrategyStats | None:
    """The strategy with the best evidence, or None when the evidence is too thin."""
    if sum(s.n for s in stats.values()) < min_evidence:
        return None
    tried = [s for s in stats.values() if s.n > 0]
    return max(tried, key=lambda s: (s.mean, s.n, s.sid)) if tried else None


def thompson(stats: dict[str, StrategyStats], rng: random.Random) -> StrategyStats | None:
    """Sample each strategy's success from its posterior and take the best draw: it
    exploits strong evidence and still tries strategies whose evidence is thin."""
    if not stats:
        return None
    draws = {
        sid: rng.betavariate(s.weighted_wins + 1.0, s.weight - s.weighted_wins + 1.0)
        for sid, s in stats.items()
    }
    return stats[max(draws, key=lambda k: (draws[k], k))]


def least_tried(stats: dict[str, StrategyStats]) -> StrategyStats | None:
    return min(stats.values(), key=lambda s: (s.n, s.sid)) if stats else None


def describe(stats: dict[str, StrategyStats], labels: dict[str, str], limit: int = 4) -> str:
    """One line of evidence, e.g. "38 similar tasks; 'x' succeeded 33/38, 'y' 2/9"."""
    total = sum(s.n for s in stats.values())
    top = sorted(stats.values(), key=lambda s: (-s.mean, -s.n))[:limit]
    parts = [f"'{labels.get(s.sid, s.sid)}' succeeded {s.wins:g}/{s.n}" for s in top]
    return f"{total} similar tasks; " + ", ".join(parts)
