"""Memory-based recommendation: which strategy worked for tasks like this one.

Pure and synchronous (no I/O, no model), so the engine calls it on the event loop in
well under a millisecond, and it can be replayed offline over a task stream.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field

from proxy.config import GuidanceConfig
from proxy.hints import evidence
from proxy.hints.lru import LRU
from proxy.hints.meaning import MeaningMemory
from proxy.hints.memory import TaskMemory
from proxy.hints.strategies import Strategy, StrategyCatalog
from proxy.hints.text import Vector, Vectorizer

VECTOR_DIM = 512
KNOWN_CHANGES = 1024  # detected changes remembered for hysteresis, most recent kept
# Tasks kept by meaning: their vectors are dense (every dimension), so a query reads the
# whole matrix; the most recent 10k cost ~1 ms a query and 23 MB at 576 dimensions.
MEANING_CAPACITY = 10_000
# A mediocre best (``guidance.mediocre_below``) counts as measured once its outcomes
# weigh this much, and as still mediocre if its record over the last tasks (this
# half-life) is too; an alternative with under FRESH_WEIGHT of evidence here has barely
# been observed. Chosen with ``bench.replay`` over 20 seeds of ten worlds and checked on
# 20 more (docs/benchmarks.md, "A firmly mediocre best gives way to a try").
FIRM_WEIGHT = 15.0
RECENT_HALF_LIFE = 50.0
FRESH_WEIGHT = 3.0


@dataclass(frozen=True)
class Recommendation:
    strategy: Strategy | None
    # When there is a strategy: "retrieval" | "explore" | "meaning" | "meaning_challenge"
    source: str | None
    stats_json: str | None  # the evidence, as recorded on the call
    stats: dict[str, evidence.StrategyStats] = field(default_factory=dict)
    # Why there is none: "thin_evidence" (too few outcomes among similar tasks: ask the
    # small model) or "low_success" (plenty, and nothing known works well enough).
    skip: str | None = None


class Recommender:
    def __init__(self, cfg: GuidanceConfig) -> None:
        self.cfg = cfg
        self.vectorizer = Vectorizer(VECTOR_DIM)
        self.memory = TaskMemory(dim=VECTOR_DIM, capacity=cfg.memory_size)
        self.catalog = StrategyCatalog()
        self.rng = random.Random(cfg.seed)
        # A change is detected in one neighbourhood's outcomes and held while they
        # still show it; keyed by the outcome it starts at, so it applies nowhere else.
        self._changes: LRU[evidence.Change, bool] = LRU(KNOWN_CHANGES)
        self.meaning: MeaningMemory | None = None

    def use_meaning(self, dim: int) -> None:
        """Keep tasks by meaning too (embeddings of ``dim`` dimensions, supplied by the
        caller through ``observe_meaning``), for ``recommend_by_meaning``."""
        self.meaning = MeaningMemory(dim, min(MEANING_CAPACITY, self.cfg.memory_size))

    def observe_call(self, request_id: str, episode_id: str, task: str,
                     response: str | None, hint: str | None = None) -> str | None:
        """A finished call; ``hint`` is its recorded ``hint_text``, if it had one.
        Returns the strategy its answer used, if one is recognised."""
        sid = self.catalog.assign(response)
        if sid is not None:
            self.memory.add(request_id, episode_id, self.vectorizer.vector(task), sid)
            self.catalog.observe_recorded_hint(hint, sid)
        return sid

    def observe_meaning(self, request_id: str, episode_id: str, embedding: Vector,
                        sid: str, outcome: float | None = None) -> None:
        """The embedding of a call's task, once computed (``observe_call`` gave sid),
        with the call's outcome when that is already known (history at start-up)."""
        if self.meaning is not None:
            self.meaning.add(request_id, episode_id, embedding, sid)
            if outcome is not None:
                self.meaning.set_outcome(request_id, None, outcome)

    def observe_outcome(self, request_id: str | None, episode_id: str | None,
                        value: float, *, meaning: bool = True) -> None:
        self.memory.set_outcome(request_id, episode_id, value)
        if meaning and self.meaning is not None:
            self.meaning.set_outcome(request_id, episode_id, value)

    def recommend(self, task: str) -> Recommendation:
        obs = self.memory.neighbours(self.vectorizer.vector(task), self.cfg.similar_k,
                                     self.cfg.min_similarity, self.catalog.renames())
        change = evidence.change_point(obs, self._changes)
        if change is not None:
            self._changes.put(change, True)
        stats = evidence.summarize(obs, self.memory.seq, self.cfg.half_life, change)
        stats_json = self._stats_json(stats) if stats else None
        best, skip = self._firm_best(stats)
        if skip == "low_success":
            return self._when_nothing_works(stats, stats_json, change)
        if best is None:
            return Recommendation(None, None, stats_json, stats, skip)
        if self.rng.random() < self.cfg.explore:
            pick = self._least_tried(stats)
            if pick is not None:
                return Recommendation(pick, "explore", stats_json, stats)
        if change is None:
            pick = self._past_mediocre(obs, stats, best)
            if pick is not None:
                return Recommendation(pick, "explore", stats_json, stats)
        return Recommendation(self.catalog.get(best.sid), "retrieval", stats_json, stats)

    def recommend_by_meaning(self, embedding: Vector) -> Recommendation:
        """Where words find too little evidence: the same judgement over the tasks
        nearest in meaning. Only a firm answer counts (``min_evidence`` outcomes, a best
        approach at ``min_success`` or more); there is no exploring and no change
        detection here, since these neighbours are other kinds of task by definition."""
        if self.meaning is None:
            return Recommendation(None, None, None, skip="thin_evidence")
        obs = self.meaning.neighbours(embedding, self.cfg.meaning_k,
                                      self.cfg.meaning_min_similarity,
                                      self.catalog.renames())
        stats = evidence.summarize(obs, self.meaning.seq, self.cfg.half_life)
        stats_json = self._stats_json(stats, "tasks alike in meaning") if stats else None
        best, skip = self._firm_best(stats)
        if best is None:
            return Recommendation(None, None, stats_json, stats, skip)
        return Recommendation(self.catalog.get(best.sid), "meaning", stats_json, stats)

    def challengeable(self, rec: Recommendation) -> bool:
        """Whether the words' answer is weak enough for memory by meaning to challenge:
        nothing known here works well enough (``low_success``), or the best known is
        estimated to succeed under ``meaning_challenge_below``."""
        if self.meaning is None or self.cfg.meaning_challenge_below <= 0:
            return False
        if rec.skip == "low_success":
            return True
        if rec.source != "retrieval" or rec.strategy is None:
            return False
        estimate = evidence.estimates(rec.stats).get(self.catalog.canonical(rec.strategy.id))
        return estimate is not None and estimate < self.cfg.meaning_challenge_below

    def challenge(self, rec: Recommendation, embedding: Vector) -> Recommendation | None:
        """The approach the tasks nearest in meaning firmly name, where it has been tried
        fewer than ``meaning_challenge_tries`` times on tasks like this one (``rec``, a
        ``challengeable`` answer by words); else None, and the words' answer stands.

        A kind of task whose own approaches work only half the time may be best met
        by one the big model never picks for it but uses on tasks like it in meaning
        (an approach seen elsewhere otherwise gets its exploratory tries only once
        nothing here works, and in no particular order). After those few tries the
        words' own evidence on it decides, as for any approach. Chosen with
        ``bench.replay`` over 20 seeds of ten worlds (docs/benchmarks.md, "Memory by
        meaning as a challenger").
        """
        by_meaning = self.recommend_by_meaning(embedding)
        if by_meaning.strategy is None:
            return None
        tried = rec.stats.get(self.catalog.canonical(by_meaning.strategy.id))
        if tried is not None and tried.n >= self.cfg.meaning_challenge_tries:
            return None
        return dataclasses.replace(by_meaning, source="meaning_challenge")

    def _firm_best(self, stats: dict[str, evidence.StrategyStats],
                   ) -> tuple[evidence.StrategyStats | None, str | None]:
        """The strategy the evidence names, or why none: "thin_evidence" (fewer than
        ``min_evidence`` outcomes) or "low_success" (none estimated to succeed
        ``min_success`` of the time)."""
        best = evidence.best(stats, self.cfg.min_evidence, self.cfg.optimism,
                             self.cfg.pessimism)
        if best is None:
            return None, "thin_evidence"
        if max(evidence.estimates(stats).values()) < self.cfg.min_success:
            return None, "low_success"
        return best, None

    def _past_mediocre(self, obs: list[evidence.Observation],
                       stats: dict[str, evidence.StrategyStats],
                       best: evidence.StrategyStats) -> Strategy | None:
        """An approach to try instead of ``best`` where ``best`` is firmly mediocre:
        estimated to succeed under ``mediocre_below`` on ``FIRM_WEIGHT`` outcomes or
        more, and on its recent record too (so not a new winner whose old record still
        drags it down). Else None, and ``best`` is named.

        Named again and again, a mediocre approach is all that gets measured here: the
        big model's own alternatives are observed only when it ignores a hint, and an
        approach it uses on other kinds of task never. So first an alternative seen here
        with under ``FRESH_WEIGHT`` of evidence and a higher estimate, else one known
        from other kinds of task and tried here fewer than ``explore_tries`` times; its
        outcomes then count as any other's. Not while a change is being re-measured
        (the caller's check): then the approaches seen here are measured afresh first.
        """
        means = evidence.estimates(stats)
        below = self.cfg.mediocre_below
        if means[best.sid] >= below or best.weight < FIRM_WEIGHT:
            return None
        recent = evidence.summarize(obs, self.memory.seq, RECENT_HALF_LIFE)
        if evidence.estimates(recent)[best.sid] >= below:
            return None
        fresh = [s for s in stats.values() if s.sid != best.sid
                 and s.weight < FRESH_WEIGHT and means[s.sid] > means[best.sid]]
        if fresh:
            return self.catalog.get(max(fresh, key=lambda s: (means[s.sid], s.sid)).sid)
        return self._least_tried(stats, below=self.cfg.explore_tries)

    def _when_nothing_works(self, stats: dict[str, evidence.StrategyStats],
                            stats_json: str | None,
                            change: evidence.Change | None) -> Recommendation:
        """Every approach seen on tasks like this one fails more often than allowed.

        Naming one would only override the big model's own choice, so the call goes out
        unguided, except that an approach seen on other kinds of task but not tried here
        gets ``explore_tries`` tries, once memory holds ``explore_after`` outcomes here
        (so the big model's own choices were measured first) and no change in what works
        is being re-measured (then the approaches seen here are measured afresh first).
        """
        if sum(s.n for s in stats.values()) >= self.cfg.explore_after and change is None:
            pick = self._least_tried(stats, below=self.cfg.explore_tries)
            if pick is not None:
                return Recommendation(pick, "explore", stats_json, stats)
        return Recommendation(None, None, stats_json, stats, "low_success")

    def with_model_vote(self, rec: Recommendation, voted: Strategy) -> Strategy:
        """The small model's pick, unless the thin evidence already seen for this kind
        of task outweighs it (``evidence.with_vote``)."""
        sid = self.catalog.canonical(voted.id)
        chosen = self.catalog.get(evidence.with_vote(rec.stats, sid))
        return voted if chosen is None or chosen.id == sid else chosen

    def _least_tried(self, stats: dict[str, evidence.StrategyStats],
                     below: int | None = None) -> Strategy | None:
        """A strategy known anywhere but least tried on tasks like this one (and tried
        fewer than ``below`` times, if given): how an approach seen on other kinds of
        task gets a chance here."""
        def tried(s: Strategy) -> int:
            return stats[s.id].n if s.id in stats else 0

        renames = self.catalog.renames()
        known = [s for s in self.catalog if s.count > 0 and s.id not in renames
                 and (below is None or tried(s) < below)]
        if not known:
            return None
        return min(known, key=lambda s: (tried(s), self.rng.random()))

    def _stats_json(self, stats: dict[str, evidence.StrategyStats],
                    kind: str = "similar tasks") -> str:
        labels = {sid: s.label for sid in stats if (s := self.catalog.get(sid))}
        return json.dumps({
            "summary": evidence.describe(stats, labels, kind),
            "strategies": {labels.get(k, k): [v.wins, v.n] for k, v in stats.items()},
        })
