"""The export check's sampling: how many tasks llama.cpp and PEFT are compared on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from learner.gate import pooled_agreement


def checks(decisions: str) -> Iterator[tuple[bool, bool]]:
    """'y' = same decision (and text), 'n' = a different one; '!' = must not be read."""
    for c in decisions:
        assert c != "!", "read a task past the decision"
        yield c == "y", c == "y"


def test_a_first_batch_that_agrees_is_enough() -> None:
    got = pooled_agreement(checks("y" * 15 + "n" + "!"), batch=16, enough=0.9,
                           more_time=lambda: True)
    assert (got.n, got.decision) == (16, 15 / 16)


def test_near_ties_in_the_first_batch_are_settled_by_the_next() -> None:
    got = pooled_agreement(checks("n" + "y" * 13 + "n" + "y" + "y" * 16 + "!"), batch=16,
                           enough=0.9, more_time=lambda: True)
    assert (got.n, got.decision) == (32, 30 / 32)
    # Two batches short: pooled, still short, and the task list ends there.
    got = pooled_agreement(checks("nny" + "y" * 13 + "nnnn" + "y" * 12), batch=16,
                           enough=0.9, more_time=lambda: True)
    assert (got.n, got.decision) == (32, 26 / 32)


def test_no_second_batch_without_time_for_it() -> None:
    got = pooled_agreement(checks("nn" + "y" * 14 + "!"), batch=16, enough=0.9,
                           more_time=lambda: False)
    assert (got.n, got.decision, got.text) == (16, 14 / 16, 14 / 16)


def test_fewer_tasks_than_a_batch_are_all_used() -> None:
    got = pooled_agreement(iter([(False, True)] * 5), batch=16, enough=0.9,
                           more_time=lambda: True)
    assert (got.n, got.decision, got.text) == (5, 1.0, 0.0)
    with pytest.raises(ValueError, match="no tasks"):
        pooled_agreement(iter([]), batch=16, enough=0.9, more_time=lambda: True)
