"""bench.naive: the issue's naive-retrieval bar, and its side-by-side command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import naive, replay
from bench.sim import load_world
from bench.sim.metrics import ArmLog, compute

WORLD = Path(__file__).resolve().parents[1] / "bench" / "worlds" / "water-utility.yaml"
STEADY = "I kept a steady hand and checked every line."
BOLD = "I took a bold shortcut and answered at once."
OTHER = "I asked the supplier for a new quote."


def answer(sentence: str) -> str:
    return f"{sentence}\n\nAnswer: done."


def test_similar_tasks_are_ranked_by_word_overlap_then_recency() -> None:
    memory = naive.NaiveRetrieval(k=2)
    memory.add("Reconcile the March invoices for sales", answer(STEADY), True)
    memory.add("Reconcile the March invoices for legal", answer(BOLD), False)
    memory.add("Reconcile the March invoices for sales", answer(BOLD), True)
    memory.add("Paint the lobby walls", answer(OTHER), True)
    got = memory.similar("Reconcile the March invoices for sales")
    # Both exact matches (Jaccard 1), the later one first; the lobby shares no word.
    assert got == [(2, 1.0), (0, 1.0)]
    assert memory.similar("Nothing in common here") == []


def test_the_two_readings_of_succeeded_most_often() -> None:
    memory = naive.NaiveRetrieval()
    # BOLD is used most and so succeeds most often (3 of 9); STEADY succeeds at the
    # better rate (2 of 2).
    for i in range(9):
        memory.add(f"Close the books for branch {i}", answer(BOLD), i < 3)
    for i in range(2):
        memory.add(f"Close the books for branch {10 + i}", answer(STEADY), True)
    task = "Close the books for branch 42"
    assert memory.hint(task, "most-wins") == BOLD
    assert memory.hint(task, "best-rate") == STEADY
    # No success among the similar tasks (or no similar task) means no hint.
    failing = naive.NaiveRetrieval()
    for i in range(3):
        failing.add(f"Close the books for branch {i}", answer(BOLD), False)
    assert failing.hint(task, "most-wins") is None
    assert failing.hint(task, "best-rate") is None
    assert failing.hint("Water the office plants", "best-rate") is None
    with pytest.raises(ValueError, match="unknown rule"):
        memory.hint(task, "most-often")


def test_the_naive_arm_hints_what_worked_and_is_scored_by_the_spec() -> None:
    world = dataclasses.replace(load_world(WORLD), seed=3)
    control = ArmLog(replay.control_arm(world))
    reports = {rule: compute(world, control, ArmLog(naive.naive_arm(world, rule)))
               for rule in naive.RULES}
    for report in reports.values():
        # It hints nearly always (some task like it has succeeded with something)...
        assert report.overall.coverage is not None and report.overall.coverage > 0.9
        assert report.overall.uplift is not None and report.overall.uplift > 0
    # ...and the rate reading, which follows what works rather than what is done
    # most, names a best strategy more often than the literal one.
    best_rate = reports["best-rate"].overall.accuracy
    most_wins = reports["most-wins"].overall.accuracy
    assert best_rate is not None and most_wins is not None and best_rate > most_wins


def test_side_by_side_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "naive.json"
    assert naive.main(["--world", str(WORLD), "--seeds", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))["water-utility"]
    assert list(data["seeds"]) == [str(load_world(WORLD).seed), "1"]
    assert set(data["mean"]) == set(naive.ARMS)
    # Tactician's arm is the replay's, so its numbers are the replay's own.
    seed = dataclasses.replace(load_world(WORLD), seed=1)
    expected = replay.summary(replay.replay(seed, replay.replay_config([]).guidance))
    assert data["seeds"]["1"]["tactician"] == expected
    printed = capsys.readouterr().out
    assert "Tactician minus best-rate, paired by world and seed" in printed
    assert "reproduce: python -m bench.naive" in printed
    with pytest.raises(SystemExit):
        naive.main(["--world", str(WORLD), "--embeddings", str(tmp_path / "e.npz")])
