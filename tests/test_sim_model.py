"""The simulated model's rules, without HTTP: compliance, priors, luck, episodes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from bench.sim import World, world_from_data
from bench.sim.model import SimModel, SimRequestError, decide, parse_messages
from bench.sim.world import Strategy, earliest_named

REPO = Path(__file__).resolve().parents[1]

WORLD = yaml.safe_load(
    """
name: stats
seed: 5
compliance: 0.7
strategies:
  - {id: a, names: ["alpha plan"], says: ["I used the alpha plan.", "Approach: alpha plan."]}
  - {id: b, names: ["beta route"], says: ["Approach: beta route."]}
  - {id: c, names: ["gamma"], says: ["Gamma, as asked."]}
families:
  - id: one
    domain: d
    templates: ["Task {n} for {who}."]
    slots: {n: ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"], who: ["x", "y", "z"]}
    prior: {a: 0.25, b: 0.75}
    success: {a: 0.8, b: 0.3}
  - id: talk
    domain: d
    turns: 3
    templates: ["Discuss {n}."]
    slots: {n: ["cats", "dogs"]}
    prior: {b: 1}
    success: {a: 0.5, b: 0.5}
phases:
  - {name: p, days: 1, requests: 3000, mix: {one: 9, talk: 1}}
"""
)


@pytest.fixture(scope="module")
def world() -> World:
    return world_from_data(WORLD)


def within(observed: float, p: float, n: int) -> bool:
    """Five standard errors: a false alarm is far rarer than one in a million."""
    return abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / n)


def user(text: str, system: str | None = None) -> list[dict[str, object]]:
    head: list[dict[str, object]] = (
        [] if system is None else [{"role": "system", "content": system}]
    )
    return [*head, {"role": "user", "content": text}]


def test_compliance_rate_and_prior_fallback(world: World) -> None:
    tasks = [t for t in world.stream() if t.family == "one"]
    decisions = [decide(world, t, "Please use the GAMMA method.") for t in tasks]
    followed = [d for d in decisions if d.followed]
    assert all(d.named == "c" for d in decisions)
    assert within(len(followed) / len(decisions), 0.7, len(decisions))
    assert all(d.strategy == "c" for d in followed)
    fallback = [d.strategy for d in decisions if not d.followed]
    assert within(fallback.count("a") / len(fallback), 0.25, len(fallback))
    unguided = [decide(world, t, "") for t in tasks]
    assert not any(d.followed or d.named for d in unguided)
    assert within([d.strategy for d in unguided].count("a") / len(tasks), 0.25, len(tasks))


def test_success_rate_per_strategy(world: World) -> None:
    tasks = [t for t in world.stream() if t.family == "one"]
    for system, strategy, p in [("", "b", 0.3), ("alpha plan", "a", 0.8)]:
        used = [d for d in (decide(world, t, system) for t in tasks) if d.strategy == strategy]
        assert within(sum(d.success for d in used) / len(used), p, len(used))


def test_common_random_numbers_across_arms(world: World) -> None:
    tasks = world.stream()[:600]
    control = [decide(world, t, "You are an agent.") for t in tasks]
    guided = [decide(world, t, "You are an agent.\nHint: use the alpha plan.") for t in tasks]
    same = [(c, g) for c, g in zip(control, guided, strict=True) if c.strategy == g.strategy]
    assert len(same) > 100
    assert all(c.success == g.success for c, g in same)
    # The luck is shared, not just the outcome: a task that succeeded with b (p=0.3)
    # in control succeeds with a (p=0.8) in the guided arm.
    both = zip(control, guided, strict=True)
    assert all(g.success for c, g in both if c.strategy == "b" and c.success and g.strategy == "a")
    assert [t.text for t in tasks] == [t.text for t in world.stream()[:600]]


def test_earliest_name_rule_across_all_strategies() -> None:
    strategies = (
        Strategy("short", ("plan",), ("plan",)),
        Strategy("long", ("plan ahead",), ("plan ahead",)),
        Strategy("other", ("Zig Zag",), ("zig zag",)),
    )
    assert earliest_named(strategies, "zig zag, then plan") == "other"
    assert earliest_named(strategies, "First PLAN AHEAD; zig zag if stuck") == "long"
    assert earliest_named(strategies, "make a plan; zIG zAG") == "short"


def test_system_and_developer_messages_are_read_in_order(world: World) -> None:
    request = parse_messages(
        [
            {"role": "developer", "content": [{"type": "text", "text": "Try the beta route."}]},
            {"role": "user", "content": " Task 1 for x. "},
            {"role": "system", "content": "Or the alpha plan."},
        ]
    )
    assert request.system_text == "Try the beta route.\nOr the alpha plan."
    assert request.first_user == "Task 1 for x." and request.turn == 0
    assert request.prompt_words == 12
    task = next(t for t in world.stream() if t.family == "one")
    assert decide(world, task, request.system_text).named == "b"


def test_unknown_and_unregistered_tasks_are_refused(world: World) -> None:
    model = SimModel(world)
    with pytest.raises(SimRequestError) as unknown:
        model.answer(user("Write me a poem."))
    assert unknown.value.code == "unknown_task"
    with pytest.raises(SimRequestError) as unregistered:
        model.answer(user(world.stream()[0].text))
    assert unregistered.value.code == "task_not_registered"
    with pytest.raises(SimRequestError):
        model.answer([{"role": "system", "content": "no user"}])


def test_reply_names_the_strategy_and_counts_words(world: World) -> None:
    model = SimModel(world)
    task = model.register(0)
    messages = user(task.text, "Use the alpha plan.")
    reply = model.answer(messages)
    record = model.record(0)
    assert record is not None and record.turns_seen == 1
    assert earliest_named(world.strategies, reply.text) == record.strategy
    assert reply.prompt_tokens == len(task.text.split()) + 4
    assert reply.completion_tokens == len(reply.text.split())
    assert "succe" not in reply.text.lower() and "fail" not in reply.text.lower()
    assert model.answer(messages) == reply  # a retry gets the same answer


def test_draws_follow_the_registered_index(world: World) -> None:
    tasks = world.stream()
    text = tasks[0].text
    twins = [t.index for t in tasks if t.text == text]
    assert len(twins) >= 3
    model = SimModel(world)
    for index in twins:
        model.register(index)
        model.answer(user(text))
    assert [r.index for r in model.records()] == twins
    assert [r.strategy for r in model.records()] == [
        decide(world, tasks[i], "").strategy for i in twins
    ]


def test_multi_turn_keeps_the_strategy(world: World) -> None:
    model = SimModel(world)
    task = next(t for t in world.stream() if t.turns == 3)
    model.register(task.index)
    messages = user(task.text, "Follow the alpha plan.")
    for turn in range(3):
        reply = model.answer(messages)
        messages[0] = {"role": "system", "content": "Switch to the beta route."}
        messages += [
            {"role": "assistant", "content": reply.text},
            {"role": "user", "content": "Continue."},
        ]
        assert (
            earliest_named(world.strategies, reply.text)
            == decide(world, task, "alpha plan").strategy
        )
        assert f"part {turn + 1} of 3" in reply.text
    record = model.record(task.index)
    assert record is not None and record.turns_seen == 3 and record.named == "a"
    assert record.system_text == "Follow the alpha plan."
    assert record.succeeded == record.success
    with pytest.raises(SimRequestError) as extra:
        model.answer(messages)
    assert extra.value.code == "too_many_turns"


def test_abandoned_episode_counts_as_failed(world: World) -> None:
    model = SimModel(world)
    tasks = [t for t in world.stream() if t.turns == 3 and decide(world, t, "").success]
    model.register(tasks[0].index)
    model.answer(user(tasks[0].text))
    record = model.record(tasks[0].index)
    assert record is not None and record.success and not record.succeeded


def test_reset_forgets_everything(world: World) -> None:
    model = SimModel(world)
    model.register(1)
    model.answer(user(world.stream()[1].text))
    model.reset()
    assert model.records() == []
    with pytest.raises(SimRequestError):
        model.answer(user(world.stream()[1].text))
