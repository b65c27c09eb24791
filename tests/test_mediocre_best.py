"""A best approach that is firmly mediocre gives way to a try of one not measured here."""

from __future__ import annotations

from proxy.config import GuidanceConfig
from proxy.hints import evidence
from proxy.hints.recommend import Recommender
from tests.test_strategies import observe

TASK = "Reconcile the dispute on invoice 99"


def mediocre(**settings: float) -> Recommender:
    """Patching the symptom has worked 11 times in 20 on tasks like TASK (estimated
    0.55: named, since it clears ``min_success``, but under ``mediocre_below``); the
    big model used root-cause analysis once, on another kind of task."""
    rec = Recommender(GuidanceConfig(**settings))  # type: ignore[arg-type]
    for i in range(20):
        observe(rec, f"s{i}", f"Reconcile the dispute on invoice {i}", "symptom",
                float(i % 9 != 0 and i % 4 != 3 and i != 10))  # 11 of 20, spread out
    observe(rec, "other", "Plan a two-day offsite for the sales team", "rootcause", 1.0)
    return rec


def test_a_firmly_mediocre_best_gives_way_to_an_approach_untried_here() -> None:
    rec = mediocre()
    got = rec.recommend(TASK)
    assert got.source == "explore" and got.strategy is not None
    assert "root cause" in got.strategy.text
    # Without the rule the mediocre approach is named, as before.
    assert mediocre(mediocre_below=0.0).recommend(TASK).source == "retrieval"
    # Tried here once and failed: nothing untried is left, the mediocre one is named.
    observe(rec, "try", "Reconcile the dispute on invoice 98", "rootcause", 0.0)
    again = rec.recommend(TASK)
    assert again.source == "retrieval" and again.strategy is not None
    assert "patch the symptom" in again.strategy.text


def test_an_alternative_barely_observed_here_is_tried_before_one_from_elsewhere() -> None:
    rec = mediocre()
    # Spot-checks worked once, on a task less alike (fewer shared words): a higher
    # estimate on little evidence, scored below the measured approach.
    observe(rec, "once", "Reconcile the invoice", "sampling", 1.0)
    got = rec.recommend(TASK)
    est = evidence.estimates(got.stats)
    best = evidence.best(got.stats, 10, pessimism=0.5)
    named = rec.catalog.get(best.sid) if best is not None else None
    assert best is not None and named is not None and "patch the symptom" in named.text
    assert got.source == "explore" and got.strategy is not None
    assert "spot-check" in got.strategy.text
    assert est[got.strategy.id] > est[best.sid]


def test_a_mediocre_record_that_is_recovering_is_still_named() -> None:
    """Failing 14 times in 20 long ago and working 10 times in 10 lately: mediocre
    over the whole record, not over the recent one, so it is still named."""
    rec = Recommender(GuidanceConfig(min_success=0.45))
    for i in range(20):
        observe(rec, f"old{i}", f"Reconcile the dispute on invoice {i}", "symptom",
                float(i % 10 < 3))
    for i in range(60):  # other work in between: the old outcomes age
        observe(rec, f"x{i}", f"Plan an offsite for team {i}", "sampling", 1.0)
    for i in range(10):
        observe(rec, f"new{i}", f"Reconcile the dispute on invoice {20 + i}", "symptom", 1.0)
    got = rec.recommend(TASK)
    assert got.stats
    symptom = next(iter(got.stats.values()))
    assert evidence.estimates(got.stats)[symptom.sid] < 0.6  # mediocre overall
    assert got.source == "retrieval" and got.strategy is not None
    assert "patch the symptom" in got.strategy.text
