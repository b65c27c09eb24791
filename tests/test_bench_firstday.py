"""bench.firstday: the first-day tally agrees with the spec's transfer metric."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from bench import firstday, replay
from bench.sim import load_world
from bench.sim.metrics import ArmLog, compute
from proxy.hints.text import Vectorizer

WORLD = Path(__file__).resolve().parents[1] / "bench" / "worlds" / "water-utility.yaml"


def test_the_tally_is_the_transfer_metric_split_by_ordinal_and_source() -> None:
    # Hashed words stand in for the small model's embeddings: the tally only needs
    # some memory by meaning to consult, and this keeps the model out of the test.
    vectors = Vectorizer(64)
    world = dataclasses.replace(load_world(WORLD), seed=3)
    guidance = replay.replay_config([]).guidance
    sources: list[str | None] = []
    records = replay.guided_arm(world, guidance, (vectors.vector, 64), sources)
    counts: Counter[tuple[str, str]] = Counter()
    firstday.tally(world, records, sources, counts)

    report = compute(world, ArmLog(replay.control_arm(world)), ArmLog(records))
    by_source = {k: n for k, n in counts.items() if not k[0][0].isdigit()}
    by_ordinal = {k: n for k, n in counts.items() if k[0][0].isdigit()}
    assert sum(by_source.values()) == sum(by_ordinal.values()) > 10
    right = sum(n for (_, result), n in by_source.items() if result == "right")
    named = right + sum(n for (_, result), n in by_source.items() if result == "wrong")
    assert report.overall.transfer is not None
    assert right / named == report.overall.transfer
    # Unhinted tasks are exactly those with no source; hinted ones always have one.
    assert {row for (row, result) in by_source if result == "unhinted"} <= {"no hint"}
    assert counts[("no hint", "right")] == counts[("no hint", "wrong")] == 0
    assert counts[("1-3", "right")] + counts[("1-3", "wrong")] + counts[
        ("1-3", "unhinted")] > 0
