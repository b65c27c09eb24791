"""Recovering strategies from answers, and the evidence that ranks them."""

from __future__ import annotations

import random

from proxy.config import GuidanceConfig
from proxy.hints import evidence
from proxy.hints.evidence import Observation
from proxy.hints.memory import TaskMemory
from proxy.hints.recommend import Recommender
from proxy.hints.strategies import StrategyCatalog, approach_sentence
from proxy.hints.text import Vectorizer


def test_approach_sentence_is_first_real_sentence() -> None:
    assert approach_sentence("Ok. I used constraint propagation: listed all. Then done.") \
        == "I used constraint propagation: listed all."
    assert approach_sentence("") is None and approach_sentence("Hi.") is None


def test_catalog_groups_near_identical_approaches_and_labels_uniquely() -> None:
    cat = StrategyCatalog()
    a = cat.assign("I used constraint propagation: listed every hard constraint first. X")
    a2 = cat.assign("I used constraint propagation: listed every hard constraint first!")
    b = cat.assign("Approach: first-fit greedy, no backtracking.")
    c = cat.assign("I used constraint propagation on the budget lines, then a table.")
    assert a == a2 and len({a, b, c}) == 3
    labels = [s.label for s in cat]
    assert len(set(labels)) == len(labels)
    assert cat.resolve(cat.get(a).label) == a  # type: ignore[union-attr]
    assert cat.resolve("") is None
    again = StrategyCatalog.from_json(cat.to_json())
    assert again.resolve(cat.get(b).label) == b  # type: ignore[union-attr]
    assert again.assign("Approach: first-fit greedy, no backtracking.") == b


def test_evidence_prefers_success_and_follows_recent_change() -> None:
    obs = [Observation("good", 1.0, 0.9, i) for i in range(8)]
    obs += [Observation("bad", 0.0, 0.9, 10 + i) for i in range(8)]
    stats = evidence.summarize(obs, now=20, half_life=250)
    assert evidence.best(stats, 3).sid == "good"  # type: ignore[union-attr]
    assert evidence.best(stats, 100) is None  # too thin
    # What worked stops working: recent failures outweigh older successes.
    drift = [Observation("s", 1.0, 0.9, i) for i in range(10)]
    drift += [Observation("s", 0.0, 0.9, 100 + i) for i in range(6)]
    drift += [Observation("t", 1.0, 0.9, 90 + i) for i in range(3)]
    assert evidence.best(evidence.summarize(drift, now=106, half_life=10), 3).sid == "t"  # type: ignore[union-attr]


def test_thin_promising_evidence_is_retried_until_firm() -> None:
    obs = [Observation("main", float(i % 2), 1.0, i) for i in range(40)]  # 50 %
    once = evidence.summarize([*obs, Observation("new", 1.0, 1.0, 40)], 41, 250)
    assert evidence.best(once, 3, optimism=0.2).sid == "new"  # type: ignore[union-attr]
    then_failed = obs + [Observation("new", float(i == 0), 1.0, 40 + i) for i in range(5)]
    stats = evidence.summarize(then_failed, 45, 250)
    assert evidence.best(stats, 3, optimism=0.2).sid == "main"  # type: ignore[union-attr]


def test_sudden_drop_is_detected_and_the_alternative_retried() -> None:
    """What worked (6 in 7) starts failing (2 in 5): with a 250-task half-life its long
    record would keep it on top for a long time; the change detector instead discounts
    everything before the drop, and the optimism bonus re-tries the alternative."""
    before = [Observation("s", float(i % 7 != 0), 0.9, i) for i in range(40)]
    before += [Observation("t", float(i % 5 < 2), 0.9, 40 + i) for i in range(10)]
    after = [Observation("s", float(i % 5 < 2), 0.9, 50 + i) for i in range(12)]
    assert evidence.change_point(before) is None
    assert evidence.best(evidence.summarize(before, 50, 250), 3, 0.2).sid == "s"  # type: ignore[union-attr]
    since = evidence.change_point(before + after)
    assert since is not None and 50 <= since <= 53
    stats = evidence.summarize(before + after, 62, 250)
    assert evidence.best(stats, 3, 0.2).sid == "t"  # type: ignore[union-attr]


def test_change_detector_rarely_fires_on_a_steady_rate() -> None:
    fired = 0
    for seed in range(100):
        rng = random.Random(seed)
        steady = [Observation("s", float(rng.random() < 0.7), 0.9, i) for i in range(100)]
        fired += evidence.change_point(steady) is not None
    assert fired <= 10  # measured: 5 in 100


def test_memory_links_outcomes_early_late_and_by_episode() -> None:
    vec = Vectorizer(64)
    mem = TaskMemory(dim=64, capacity=4)
    mem.set_outcome("r-early", None, 1.0)  # before the call exists
    mem.add("r-early", "e1", vec.vector("plan the offsite"), "s1")
    mem.add("r2", "e2", vec.vector("plan the offsite again"), "s2")
    mem.add("r3", "e2", vec.vector("plan the offsite again"), "s2")  # same episode
    mem.set_outcome(None, "e2", 0.0)
    got = {o.sid: o.success for o in mem.neighbours(vec.vector("plan the offsite"), 5, 0.1)}
    assert got == {"s1": 1.0, "s2": 0.0} and len(mem) == 2
    for i in range(4):  # capacity 4: the oldest are evicted
        mem.add(f"n{i}", f"n{i}", vec.vector(f"other {i}"), "s3")
    assert len(mem) == 4 and not mem.neighbours(vec.vector("plan the offsite"), 5, 0.5)


def test_estimates_shrink_thin_evidence_toward_the_neighbourhood_rate() -> None:
    obs = [Observation("a", float(i % 4 != 0), 0.9, i) for i in range(40)]  # 75 %
    obs.append(Observation("b", 0.0, 0.9, 40))
    est = evidence.estimates(evidence.summarize(obs, 41, 0))
    assert 0.72 < est["a"] < 0.76
    assert 0.4 < est["b"] < 0.6  # one failure: half way to 0 from the neighbourhood's 0.73
    assert evidence.estimates({}) == {}


APPROACHES = {
    "symptom": "I chose to patch the symptom so things work again quickly. Done.",
    "sampling": "I did spot-check sampling: looked at a random handful of lines. Done.",
    "rootcause": "I applied five whys root cause analysis to find what broke. Done.",
}


def recommender_after(outcomes: dict[str, float], min_success: float) -> Recommender:
    """A recommender whose memory holds 20 similar tasks per approach, each approach
    succeeding at the given rate."""
    rec = Recommender(GuidanceConfig(min_success=min_success))
    for sid, rate in outcomes.items():
        for i in range(20):
            rid = f"{sid}-{i}"
            rec.observe_call(rid, rid, f"Reconcile the dispute on invoice {i}",
                             APPROACHES[sid])
            rec.observe_outcome(rid, None, float(i % 10 < rate * 10))  # spread out, no drop
    return rec


def test_no_hint_when_nothing_known_works_well_enough() -> None:
    task = "Reconcile the dispute on invoice 99"
    poor = recommender_after({"symptom": 0.3, "sampling": 0.4}, min_success=0.5)
    got = poor.recommend(task)
    assert got.strategy is None and got.skip == "low_success" and got.stats_json
    good = recommender_after({"symptom": 0.3, "rootcause": 0.8}, min_success=0.5)
    got = good.recommend(task)
    assert got.strategy is not None and "root cause" in got.strategy.text
    assert got.skip is None and got.source == "retrieval"
    # The floor is a setting: at 0 the best of the poor ones is named after all.
    anyway = recommender_after({"symptom": 0.3, "sampling": 0.4}, min_success=0.0)
    assert anyway.recommend(task).strategy is not None
    thin = Recommender(GuidanceConfig()).recommend(task)
    assert thin.strategy is None and thin.skip == "thin_evidence"
