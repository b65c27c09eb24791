"""Outcome evidence per strategy among similar past tasks.

Recent outcomes weigh more than old ones (aged by how many tasks the memory has seen
since), which lets the recommendation follow a change in what works. A kind of task
that stays the same is not forgotten: its old evidence still points the same way, with
less weight, and the optimism bonus re-checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIOR_STRENGTH = 2.0  # pseudo-observations at the neighbourhood's success rate


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


def summarize(observations: list[Observation], now: int,
              half_life: float) -> dict[str, StrategyStats]:
    """Per-strategy evidence; an outcome ``half_life`` tasks old counts half.

    Age is measured in tasks seen by the whole memory, not in neighbours, so a strategy
    that was tried long ago for this kind of task keeps little weight: its evidence is
    stale, and the optimism bonus below will try it again.
    """
    stats: dict[str, StrategyStats] = {}
    for obs in observations:
        w = 0.5 ** ((now - obs.seq) / half_life) if half_life > 0 else 1.0
        s = stats.setdefault(obs.sid, StrategyStats(obs.sid))
        s.n += 1
        s.wins += obs.success
        s.weight += w
        s.weighted_wins += w * obs.success
    return stats


def best(stats: dict[str, StrategyStats], min_evidence: int,
         optimism: float = 0.0) -> StrategyStats | None:
    """The strategy to recommend, or None when the evidence is too thin to act on.

    Each strategy's success is estimated with a prior centred on the neighbourhood's
    overall success rate (so a strategy's first few outcomes move it only part of the
    way), plus an optimism bonus that shrinks as its recency-weighted evidence grows: a
    strategy that did well the few times it was tried, or whose evidence has gone
    stale, is tried again until its evidence is firm. That is how a better approach is
    discovered and a change in what works is followed.
    """
    if sum(s.n for s in stats.values()) < min_evidence:
        return None
    tried = [s for s in stats.values() if s.n > 0]
    if not tried:
        return None
    total = sum(s.weight for s in tried)
    base = (sum(s.weighted_wins for s in tried) + 1.0) / (total + 2.0)

    def mean(s: StrategyStats) -> float:
        return (s.weighted_wins + PRIOR_STRENGTH * base) / (s.weight + PRIOR_STRENGTH)

    def score(s: StrategyStats) -> tuple[float, int, str]:
        bonus = optimism * math.sqrt(math.log(total + 1.0) / (s.weight + 1.0))
        return (mean(s) + bonus, s.n, s.sid)

    return max(tried, key=score)


def describe(stats: dict[str, StrategyStats], labels: dict[str, str], limit: int = 4) -> str:
    """One line of evidence, e.g. "38 similar tasks; 'x' succeeded 33/38, 'y' 2/9"."""
    total = sum(s.n for s in stats.values())
    top = sorted(stats.values(), key=lambda s: (-s.mean, -s.n))[:limit]
    parts = [f"'{labels.get(s.sid, s.sid)}' succeeded {s.wins:g}/{s.n}" for s in top]
    return f"{total} similar tasks; " + ", ".join(parts)
