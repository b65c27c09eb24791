"""Outcome evidence per strategy among similar past tasks.

Recent outcomes weigh more than old ones (aged by how many tasks the memory has seen
since), which lets the recommendation follow a slow change in what works. A kind of task
that stays the same is not forgotten: its old evidence still points the same way, with
less weight, and the tasks where the big model does not follow the hint keep measuring
the others.

A sudden change (the strategy that used to work now fails much more often) is detected
outright: when one strategy's outcomes among the neighbours split into an earlier and a
later run whose success rates differ by a likelihood ratio too large for chance, every
outcome before the split counts for little, for all strategies, since what they said
was measured in a world that has changed, and fresh outcomes decide again.
A change once detected stays in force while the outcomes still show it at a lower
ratio (hysteresis): a lucky run right after a drop would otherwise switch the
discount off and on from one task to the next.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass

PRIOR_STRENGTH = 2.0  # pseudo-observations at the neighbourhood's success rate
# Change detection. Chosen by replaying three worlds over six seeds each (mean adaptation
# 0.70 -> 0.81 and 0.59 -> 0.80, accuracy and uplift unchanged or better); a threshold
# of 3 or runs of 4 fire on noise in stable kinds of task and cost accuracy there.
CHANGE_MIN_RUN = 6  # outcomes needed on each side of a split
CHANGE_MIN_DROP = 0.2  # only a drop in success this large is a change worth acting on
CHANGE_LLR = 4.0  # log-likelihood ratio of "two rates" over "one rate"
STALE_WEIGHT = 0.2  # what an outcome from before a detected change still counts for
MODEL_VOTE = 2.0  # where evidence is thin, the small model's label counts this many wins
# A known change holds down to this ratio. Chosen by replaying three worlds over 20 seeds
# each: adaptation 0.88 -> 0.89 and 0.76 -> 0.82, accuracy within -0.01; 1.0-1.5
# adapts a little more and costs a little more accuracy.
CHANGE_KEEP_LLR = 2.0


@dataclass(frozen=True)
class Observation:
    sid: str
    success: float  # 1.0 success, 0.0 failure, or a score in between
    similarity: float
    seq: int  # larger = more recent


@dataclass(frozen=True)
class Change:
    sid: str  # the strategy whose success dropped
    seq: int  # its first outcome after the drop


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


def summarize(observations: list[Observation], now: int, half_life: float,
              change: Change | None = None) -> dict[str, StrategyStats]:
    """Per-strategy evidence; an outcome ``half_life`` tasks old counts half, and one
    from before ``change`` (``change_point``'s answer for these outcomes) little.

    Age is measured in tasks seen by the whole memory, not in neighbours, so a strategy
    that was tried long ago for this kind of task keeps little weight: its evidence is
    stale (and the optional optimism bonus in ``best`` tries it again).

    Each outcome also counts in proportion to its task's similarity to the nearest
    one's (``_by_similarity``).
    """
    weights = _by_similarity(observations, [_age_weight(o, now, half_life, change)
                                            for o in observations])
    stats: dict[str, StrategyStats] = {}
    for obs, w in zip(observations, weights, strict=True):
        s = stats.setdefault(obs.sid, StrategyStats(obs.sid))
        s.n += 1
        s.wins += obs.success
        s.weight += w
        s.weighted_wins += w * obs.success
    return stats


def _age_weight(obs: Observation, now: int, half_life: float,
                change: Change | None) -> float:
    w = 0.5 ** ((now - obs.seq) / half_life) if half_life > 0 else 1.0
    if change is not None and obs.seq < change.seq:
        w *= STALE_WEIGHT
    return w


def _by_similarity(observations: list[Observation], weights: list[float]) -> list[float]:
    """``weights`` scaled by each task's similarity over the nearest one's, then
    rescaled to their old total.

    Neighbours above the similarity floor mix the task's own kind with others that
    share a few words (a room number, a city) and whose best approach differs; nearer
    ones now count more. The rescaling keeps the evidence's total weight, so the
    prior's pseudo-outcomes (``estimates``) keep their strength. Chosen with
    ``bench.replay`` over 20 seeds of six worlds and judged on three written later
    (docs/benchmarks.md, "Memory by meaning"); scaling without the rescaling, or by
    the similarity squared, lost uplift on all six.
    """
    top = max((o.similarity for o in observations), default=0.0)
    if top <= 0:
        return weights
    scaled = [w * max(o.similarity, 0.0) / top for o, w in zip(observations, weights,
                                                              strict=True)]
    total = sum(scaled)
    if total <= 0:
        return weights
    factor = sum(weights) / total
    return [w * factor for w in scaled]


def change_point(observations: list[Observation],
                 known: Container[Change] = ()) -> Change | None:
    """The strongest drop in some strategy's success beyond chance, or None.

    For each strategy with enough outcomes, every split of its outcomes (in time order)
    into two runs of at least ``CHANGE_MIN_RUN`` is scored by the Bernoulli
    log-likelihood ratio; the strongest split that is a drop of ``CHANGE_MIN_DROP`` or
    more and clears ``CHANGE_LLR`` wins, or ``CHANGE_KEEP_LLR`` for a split in
    ``known`` (the changes detected before). O(n) per strategy with prefix sums.
    """
    by_sid: dict[str, list[Observation]] = {}
    for obs in observations:
        by_sid.setdefault(obs.sid, []).append(obs)
    found: tuple[float, Change] | None = None
    for sid, runs in by_sid.items():
        n = len(runs)
        if n < 2 * CHANGE_MIN_RUN:
            continue
        runs.sort(key=lambda o: o.seq)
        prefix = [0.0]
        for obs in runs:
            prefix.append(prefix[-1] + obs.success)
        whole = _log_likelihood(prefix[-1], n)
        for k in range(CHANGE_MIN_RUN, n - CHANGE_MIN_RUN + 1):
            before, after = prefix[k], prefix[-1] - prefix[k]
            if after / (n - k) > before / k - CHANGE_MIN_DROP:
                continue
            llr = _log_likelihood(before, k) + _log_likelihood(after, n - k) - whole
            if llr <= CHANGE_KEEP_LLR or (found is not None and llr <= found[0]):
                continue
            change = Change(sid, runs[k].seq)
            if llr > CHANGE_LLR or change in known:
                found = (llr, change)
    return found[1] if found else None


def _log_likelihood(wins: float, n: int) -> float:
    """Bernoulli log-likelihood of ``wins`` in ``n`` at its own best rate."""
    p = min(max(wins / n, 1e-9), 1.0 - 1e-9)
    return wins * math.log(p) + (n - wins) * math.log(1.0 - p)


def best(stats: dict[str, StrategyStats], min_evidence: int,
         optimism: float = 0.0, pessimism: float = 0.0) -> StrategyStats | None:
    """The strategy to recommend, or None when the evidence is too thin to act on.

    Each strategy's success is estimated with a prior centred on the neighbourhood's
    overall success rate (``estimates``), plus, if ``optimism`` > 0, a bonus that
    shrinks as its recency-weighted evidence grows (UCB-style): a strategy that did
    well the few times it was tried, or whose evidence has gone stale, is tried again
    until its evidence is firm. The proxy runs without it by default (see
    docs/configuration.md, ``guidance.optimism``).

    ``pessimism`` scores each strategy that many posterior standard deviations below
    its estimate. Among several approaches tried a few times each (often one approach
    in phrasings not yet known to be one), the highest estimate is mostly the luckiest
    record, not the best approach; scored a little below its estimate, one success in
    one no longer outranks 17 in 20. The proxy runs with 0.5 (``guidance.pessimism``).
    """
    if sum(s.n for s in stats.values()) < min_evidence:
        return None
    means = estimates(stats)
    if not means:
        return None
    total = sum(stats[sid].weight for sid in means)

    def score(s: StrategyStats) -> tuple[float, int, str]:
        mean = means[s.sid]
        bonus = optimism * math.sqrt(math.log(total + 1.0) / (s.weight + 1.0))
        doubt = pessimism * math.sqrt(mean * (1.0 - mean) / (s.weight + PRIOR_STRENGTH))
        return (mean + bonus - doubt, s.n, s.sid)

    return max((stats[sid] for sid in means), key=score)


def with_vote(stats: dict[str, StrategyStats], voted: str) -> str:
    """Where evidence is too thin to act on alone: the strategy with the best success
    rate once the small model's label counts as ``MODEL_VOTE`` successes of its own.

    The model is trained on outcomes of other tasks and may name, for a kind of task it
    has not seen, an approach that the few outcomes already seen show failing; those
    outcomes then outweigh its vote. With no outcomes at all, its label stands.
    """
    def rate(sid: str) -> float:
        s = stats.get(sid)
        wins, weight = (s.weighted_wins, s.weight) if s is not None else (0.0, 0.0)
        vote = MODEL_VOTE if sid == voted else 0.0
        return (wins + vote) / (weight + vote) if weight + vote > 0 else 0.0

    return max([voted, *(sid for sid in stats if sid != voted)],
               key=lambda sid: (rate(sid), sid == voted))


def estimates(stats: dict[str, StrategyStats]) -> dict[str, float]:
    """Estimated success of each tried strategy: its recency-weighted outcomes plus
    ``PRIOR_STRENGTH`` pseudo-outcomes at the neighbourhood's overall rate, so a
    strategy's first few outcomes move it only part of the way."""
    tried = [s for s in stats.values() if s.n > 0]
    total = sum(s.weight for s in tried)
    base = (sum(s.weighted_wins for s in tried) + 1.0) / (total + 2.0)
    return {s.sid: (s.weighted_wins + PRIOR_STRENGTH * base) / (s.weight + PRIOR_STRENGTH)
            for s in tried}


def describe(stats: dict[str, StrategyStats], labels: dict[str, str],
             kind: str = "similar tasks", limit: int = 4) -> str:
    """One line of evidence, e.g. "38 similar tasks; 'x' succeeded 33/38, 'y' 2/9"."""
    total = sum(s.n for s in stats.values())
    top = sorted(stats.values(), key=lambda s: (-s.mean, -s.n))[:limit]
    parts = [f"'{labels.get(s.sid, s.sid)}' succeeded {s.wins:g}/{s.n}" for s in top]
    return f"{total} {kind}; " + ", ".join(parts)
