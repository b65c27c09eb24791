"""World files: strict loading, the task stream and its common random numbers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.sim import WorldError, draw, load_world, parse_world, world_from_data
from bench.sim.world import earliest_named

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "bench" / "worlds").glob("*.yaml"))
OFFICE_OPS = Path("/work/shared/bench/worlds/office-ops.yaml")

BASE = yaml.safe_load(
    """
name: tiny
seed: 3
compliance: 0.9
agent_system_prompt: "You are a helpful agent."
strategies:
  - {id: a, names: ["alpha plan", "plan alpha"], says: ["I used the alpha plan."]}
  - {id: b, names: ["beta route"], says: ["Approach: beta route."]}
families:
  - id: f1
    domain: d1
    templates: ["Do {x} for {y}.", "Please do {x} now."]
    slots: {x: ["one", "two", "three"], y: ["ann", "bob"]}
    prior: {a: 0.5, b: 0.5}
    success: {a: 0.9, b: 0.2}
  - id: f2
    domain: d2
    turns: 2
    templates: ["Fix {z}."]
    slots: {z: ["the sink", "the roof"]}
    prior: {b: 1}
    success: {a: 0.3, b: 0.7}
    success_default: 0.1
phases:
  - {name: p1, days: 3, requests: 7, mix: {f1: 1}}
  - name: p2
    days: 2
    requests: 6
    mix: {f1: 1, f2: 1}
    changes: {f1: {success: {a: 0.1, b: 0.8}}}
  - name: p3
    days: 1
    requests: 4
    mix: {f1: 1, f2: 2}
    changes: {f1: {prior: {a: 1}}, f2: {success_default: 0.3}}
"""
)

Mutation = Callable[[dict[str, Any]], object]


def mutated(change: Mutation) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(BASE)
    change(data)
    return data


BAD_WORLDS: list[tuple[str, Mutation, str]] = [
    ("top key", lambda d: d.update(sede=1), "unknown key 'sede'"),
    (
        "family key",
        lambda d: d["families"][0].update(sucess={}),
        "families[0] (f1): unknown key 'sucess'",
    ),
    ("strategy key", lambda d: d["strategies"][0].update(name="x"), "unknown key 'name'"),
    ("phase key", lambda d: d["phases"][0].update(day=1), "unknown key 'day'"),
    (
        "change key",
        lambda d: d["phases"][1]["changes"]["f1"].update(turns=2),
        "unknown key 'turns'",
    ),
    ("missing key", lambda d: d.pop("seed"), "missing key 'seed'"),
    ("mix family", lambda d: d["phases"][0]["mix"].update(nope=1), "unknown family 'nope'"),
    (
        "prior strategy",
        lambda d: d["families"][0]["prior"].update(zeta=0),
        "unknown strategy 'zeta'",
    ),
    (
        "success strategy",
        lambda d: d["families"][1]["success"].update(zeta=1),
        "unknown strategy 'zeta'",
    ),
    (
        "change family",
        lambda d: d["phases"][1]["changes"].update(f9={"prior": {"a": 1}}),
        "unknown family 'f9'",
    ),
    (
        "change strategy",
        lambda d: d["phases"][1]["changes"]["f1"]["success"].update(zeta=1),
        "unknown strategy 'zeta'",
    ),
    (
        "says no name",
        lambda d: d["strategies"][1]["says"].append("I just did it."),
        "must contain one of",
    ),
    (
        "says other name first",
        lambda d: d["strategies"][1]["says"].append("Not alpha plan: beta route."),
        "strategy 'b': says",
    ),
    ("slot", lambda d: d["families"][0]["templates"].append("Do {w}."), "unknown slot {w}"),
    ("prior sum", lambda d: d["families"][0]["prior"].update(a=0.9), "must sum to 1"),
    ("probability", lambda d: d["families"][0]["success"].update(a=1.5), "probability"),
    ("compliance", lambda d: d.update(compliance=2), "compliance"),
    ("seed type", lambda d: d.update(seed="7"), "seed"),
    ("bool as int", lambda d: d["phases"][0].update(days=True), "days"),
    (
        "prompt names",
        lambda d: d.update(agent_system_prompt="Prefer the Beta Route."),
        "names strategy 'b'",
    ),
    (
        "dup name",
        lambda d: d["strategies"][1]["names"].append("ALPHA PLAN"),
        "duplicate name 'alpha plan'",
    ),
    (
        "dup id",
        lambda d: d["families"].append(copy.deepcopy(d["families"][0])),
        "duplicate id 'f1'",
    ),
    ("too few requests", lambda d: d["phases"][0].update(requests=2), "requests"),
    ("empty change", lambda d: d["phases"][1]["changes"].update(f2={}), "must replace"),
    ("same text", lambda d: [f.update(templates=["Same."]) for f in d["families"]], "both produce"),
]


@pytest.mark.parametrize(("label", "change", "message"), BAD_WORLDS, ids=[b[0] for b in BAD_WORLDS])
def test_bad_world_is_rejected_with_a_clear_message(
    label: str, change: Mutation, message: str
) -> None:
    with pytest.raises(WorldError) as caught:
        world_from_data(mutated(change), "w.yaml")
    assert message in str(caught.value), str(caught.value)


def test_duplicate_yaml_keys_and_bad_yaml_are_rejected() -> None:
    text = yaml.safe_dump(BASE).replace("seed: 3", "seed: 3\nseed: 4")
    with pytest.raises(WorldError, match="duplicate key 'seed'"):
        parse_world(text)
    with pytest.raises(WorldError, match="not valid YAML"):
        parse_world("name: [")


@pytest.mark.parametrize("path", [*SHIPPED, OFFICE_OPS], ids=lambda p: p.name)
def test_shipped_worlds_load(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    world = load_world(path)
    tasks = world.stream()
    assert len(tasks) == sum(p.requests for p in world.phases) <= 800
    assert any(p.changes for p in world.phases)


def test_own_worlds_differ_from_the_example() -> None:
    worlds = [load_world(p) for p in SHIPPED]
    assert len(worlds) >= 2
    # Each differs from the example (8 strategies) in how many, and they span several.
    assert all(len(w.strategies) != 8 for w in worlds)
    assert len({len(w.strategies) for w in worlds}) >= 4
    for world in worlds:
        assert any(f.turns > 1 for f in world.families)
        first = {world.family(f).domain for f in world.phases[0].mix}
        assert {world.family(f).domain for f in world.phases[-1].mix} - first
        assert sum(t.turns for t in world.stream()) <= 800


def test_days_split_evenly_with_the_remainder_on_the_first_days() -> None:
    world = world_from_data(BASE)
    assert [p.day_sizes() for p in world.phases] == [(3, 2, 2), (3, 3), (4,)]
    tasks = world.stream()
    assert [t.day for t in tasks[:7]] == [0, 0, 0, 1, 1, 2, 2]
    assert [t.day_in_phase for t in tasks[7:13]] == [0, 0, 0, 1, 1, 1]
    assert tasks[7].day == 3 and tasks[-1].day == 5
    assert [t.position for t in tasks[7:13]] == list(range(6))
    assert tasks[7].phase == "p2" and tasks[7].phase_index == 1


def test_tasks_depend_only_on_seed_and_index() -> None:
    world = world_from_data(BASE)
    longer = world_from_data(mutated(lambda d: d["phases"][2].update(requests=40)))
    reseeded = world_from_data(mutated(lambda d: d.update(seed=4)))
    assert world.stream() == world_from_data(BASE).stream()
    assert longer.stream()[: len(world.stream())] == world.stream()
    assert [t.text for t in reseeded.stream()] != [t.text for t in world.stream()]
    assert draw(3, 5, "success") == draw(3, 5, "success")
    assert len({draw(3, i, "x") for i in range(100)}) == 100
    assert all(0 <= draw(s, i, "p") < 1 for s in range(3) for i in range(50))


def test_changes_accumulate_from_their_phase_on() -> None:
    world = world_from_data(BASE)
    assert world.tables("f1", "p1").success == {"a": 0.9, "b": 0.2}
    assert world.tables("f1", "p2").success == {"a": 0.1, "b": 0.8}
    p3 = world.tables("f1", "p3")
    assert p3.success == {"a": 0.1, "b": 0.8} and p3.prior == {"a": 1}
    assert world.tables("f2", "p2").success_default == 0.1
    assert world.tables("f2", "p3").success_default == 0.3
    assert world.best_strategies("f1", "p1") == {"a"}
    assert world.best_strategies("f1", "p2") == {"b"}


def test_best_strategies_ties_and_default() -> None:
    tied = mutated(lambda d: d["families"][1].update(success={"a": 0.7, "b": 0.7}))
    assert world_from_data(tied).best_strategies("f2", "p1") == {"a", "b"}
    high_default = mutated(
        lambda d: d["families"][1].update(success={"a": 0.2}, success_default=0.5)
    )
    assert world_from_data(high_default).best_strategies("f2", "p1") == {"b"}


def test_earliest_name_wins_case_insensitively() -> None:
    strategies = world_from_data(BASE).strategies
    assert earliest_named(strategies, "Try the BETA ROUTE, not the alpha plan") == "b"
    assert earliest_named(strategies, "Plan Alpha first; a beta route later") == "a"
    assert earliest_named(strategies, "no strategy here") is None
