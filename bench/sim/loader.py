"""Strict loader for world files (WORLD_SPEC.md).

Every rejection names the file, the place (e.g. ``families[2] (outage-reply).prior``)
and the offending key or value, because world authors never read this code.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.sim.world import (
    SLOT_RE,
    Change,
    Family,
    Phase,
    Strategy,
    Tables,
    World,
    WorldError,
    earliest_named,
)

Keys = tuple[frozenset[str], frozenset[str] | None]  # (required, optional); None: any key

_TOP: Keys = (
    frozenset({"name", "seed", "compliance", "strategies", "families", "phases"}),
    frozenset({"agent_system_prompt"}),
)
_STRATEGY: Keys = (frozenset({"id", "names", "says"}), frozenset())
_FAMILY: Keys = (
    frozenset({"id", "domain", "templates", "prior", "success"}),
    frozenset({"turns", "slots", "success_default"}),
)
_PHASE: Keys = (frozenset({"name", "days", "requests", "mix"}), frozenset({"changes"}))
_CHANGE: Keys = (frozenset(), frozenset({"prior", "success", "success_default"}))
_ANY: Keys = (frozenset(), None)


_BENCH = Path(__file__).resolve().parents[1]
OWN_WORLDS = _BENCH / "worlds"  # the worlds written for this project
# The spec's world, in the shared folder beside the repository.
OFFICE_OPS = _BENCH.parents[1] / "shared/bench/worlds/office-ops.yaml"


def load_world(path: str | Path) -> World:
    """Read and validate a world file; raises WorldError naming what is wrong."""
    return parse_world(Path(path).read_text(encoding="utf-8"), source=str(path))


def parse_world(text: str, source: str = "<world>") -> World:
    try:
        _reject_duplicate_keys(yaml.compose(text))
        data: object = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorldError(f"{source}: not valid YAML: {exc}") from exc
    return world_from_data(data, source)


def world_from_data(data: object, source: str = "<world>") -> World:
    top = _fields(data, source, _TOP)
    strategies = tuple(
        _strategy(item, f"{source}: strategies[{i}]")
        for i, item in enumerate(_list(top["strategies"], f"{source}: strategies"))
    )
    _check_strategies(strategies, source)
    ids = frozenset(s.id for s in strategies)
    families = tuple(
        _family(item, f"{source}: families[{i}]", ids)
        for i, item in enumerate(_list(top["families"], f"{source}: families"))
    )
    _unique([f.id for f in families], f"{source}: families", "id")
    fam_ids = frozenset(f.id for f in families)
    phases = tuple(
        _phase(item, f"{source}: phases[{i}]", fam_ids, ids)
        for i, item in enumerate(_list(top["phases"], f"{source}: phases"))
    )
    _unique([p.name for p in phases], f"{source}: phases", "name")
    prompt = top.get("agent_system_prompt")
    world = World(
        name=_str(top["name"], f"{source}: name"),
        seed=_int(top["seed"], f"{source}: seed", 0),
        compliance=_prob(top["compliance"], f"{source}: compliance"),
        agent_system_prompt=None
        if prompt is None
        else _str(prompt, f"{source}: agent_system_prompt"),
        strategies=strategies,
        families=families,
        phases=phases,
    )
    _check_world(world, source)
    return world


def _reject_duplicate_keys(node: yaml.Node | None) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise WorldError(f"line {key.start_mark.line + 1}: duplicate key {key.value!r}")
                seen.add(key.value)
            _reject_duplicate_keys(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item)


def _strategy(data: object, where: str) -> Strategy:
    where = _named(data, where, "id")
    raw = _fields(data, where, _STRATEGY)
    sid = _str(raw["id"], f"{where}.id")
    return Strategy(sid, _strs(raw["names"], f"{where}.names"), _strs(raw["says"], f"{where}.says"))


def _check_strategies(strategies: tuple[Strategy, ...], source: str) -> None:
    if not strategies:
        raise WorldError(f"{source}: strategies: at least one is needed")
    _unique([s.id for s in strategies], f"{source}: strategies", "id")
    _unique([n.lower() for s in strategies for n in s.names], f"{source}: strategies", "name")
    for strategy in strategies:
        for line in strategy.says:
            if earliest_named(strategies, line) != strategy.id:
                raise WorldError(
                    f"{source}: strategy {strategy.id!r}: says line {line!r} must contain one of "
                    f"its names {list(strategy.names)} before any other strategy's name"
                )


def _family(data: object, where: str, strategy_ids: frozenset[str]) -> Family:
    where = _named(data, where, "id")
    raw = _fields(data, where, _FAMILY)
    fid = _str(raw["id"], f"{where}.id")
    slots_raw = _fields(raw.get("slots", {}), f"{where}.slots", _ANY)
    slots = {name: _strs(values, f"{where}.slots.{name}") for name, values in slots_raw.items()}
    templates = _strs(raw["templates"], f"{where}.templates")
    for template in templates:
        for slot in SLOT_RE.findall(template):
            if slot not in slots:
                raise WorldError(f"{where}: template {template!r} uses unknown slot {{{slot}}}")
    tables = Tables(
        prior=_prior(raw["prior"], f"{where}.prior", strategy_ids),
        success=_success(raw["success"], f"{where}.success", strategy_ids),
        success_default=_prob(raw.get("success_default", 0.0), f"{where}.success_default"),
    )
    turns = _int(raw.get("turns", 1), f"{where}.turns", 1)
    return Family(fid, _str(raw["domain"], f"{where}.domain"), turns, templates, slots, tables)


def _phase(
    data: object, where: str, families: frozenset[str], strategy_ids: frozenset[str]
) -> Phase:
    where = _named(data, where, "name")
    raw = _fields(data, where, _PHASE)
    name = _str(raw["name"], f"{where}.name")
    days = _int(raw["days"], f"{where}.days", 1)
    requests = _int(raw["requests"], f"{where}.requests", days)
    mix = _weights(raw["mix"], f"{where}.mix", families, "family")
    if not any(w > 0 for w in mix.values()):
        raise WorldError(f"{where}.mix: at least one weight must be positive")
    changes_raw = _fields(raw.get("changes", {}), f"{where}.changes", _ANY)
    changes = tuple(
        _change(fid, value, f"{where}.changes.{fid}", families, strategy_ids)
        for fid, value in changes_raw.items()
    )
    return Phase(name, days, requests, mix, changes)


def _change(
    fid: str, data: object, where: str, families: frozenset[str], strategy_ids: frozenset[str]
) -> Change:
    if fid not in families:
        raise WorldError(f"{where}: unknown family {fid!r}")
    raw = _fields(data, where, _CHANGE)
    if not raw:
        raise WorldError(f"{where}: a change must replace prior, success or success_default")
    prior = _prior(raw["prior"], f"{where}.prior", strategy_ids) if "prior" in raw else None
    success = (
        _success(raw["success"], f"{where}.success", strategy_ids) if "success" in raw else None
    )
    default = raw.get("success_default")
    default_p = None if default is None else _prob(default, f"{where}.success_default")
    return Change(fid, prior, success, default_p)


def _check_world(world: World, source: str) -> None:
    prompt = world.agent_system_prompt
    if prompt is not None and (named := earliest_named(world.strategies, prompt)) is not None:
        raise WorldError(f"{source}: agent_system_prompt names strategy {named!r}")
    if not world.families or not world.phases:
        raise WorldError(f"{source}: at least one family and one phase are needed")
    family_of: dict[str, str] = {}
    for task in world.stream():
        other = family_of.setdefault(task.text, task.family)
        if other != task.family:
            raise WorldError(
                f"{source}: families {other!r} and {task.family!r} both produce {task.text!r}"
            )


# ---- typed readers ---------------------------------------------------------------


def _named(data: object, where: str, key: str) -> str:
    """``where`` plus the item's id when it has one, so messages say which item."""
    label = data.get(key) if isinstance(data, dict) else None
    return f"{where} ({label})" if isinstance(label, str) else where


def _fields(data: object, where: str, keys: Keys) -> dict[str, object]:
    """A mapping with string keys, checked against the allowed ones."""
    required, optional = keys
    if not isinstance(data, dict):
        raise WorldError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise WorldError(f"{where}: key {key!r} is not a string")
        if optional is not None and key not in required | optional:
            allowed = ", ".join(sorted(required | optional))
            raise WorldError(f"{where}: unknown key {key!r} (allowed: {allowed})")
    for key in sorted(required - data.keys()):
        raise WorldError(f"{where}: missing key {key!r}")
    return {str(k): v for k, v in data.items()}


def _list(data: object, where: str) -> list[object]:
    if not isinstance(data, list):
        raise WorldError(f"{where}: expected a list, got {type(data).__name__}")
    return data


def _str(data: object, where: str) -> str:
    if not isinstance(data, str) or not data.strip():
        raise WorldError(f"{where}: expected a non-empty string, got {data!r}")
    return data


def _strs(data: object, where: str) -> tuple[str, ...]:
    items = _list(data, where)
    if not items:
        raise WorldError(f"{where}: expected a non-empty list")
    return tuple(_str(item, f"{where}[{i}]") for i, item in enumerate(items))


def _int(data: object, where: str, minimum: int) -> int:
    if isinstance(data, bool) or not isinstance(data, int) or data < minimum:
        raise WorldError(f"{where}: expected an integer >= {minimum}, got {data!r}")
    return data


def _number(data: object, where: str) -> float:
    if isinstance(data, bool) or not isinstance(data, int | float) or data < 0:
        raise WorldError(f"{where}: expected a number >= 0, got {data!r}")
    return float(data)


def _prob(data: object, where: str) -> float:
    value = _number(data, where)
    if value > 1:
        raise WorldError(f"{where}: expected a probability in [0, 1], got {data!r}")
    return value


def _weights(data: object, where: str, known: frozenset[str], what: str) -> dict[str, float]:
    raw = _fields(data, where, _ANY)
    for key in raw:
        if key not in known:
            raise WorldError(f"{where}: unknown {what} {key!r}")
    return {key: _number(value, f"{where}.{key}") for key, value in raw.items()}


def _prior(data: object, where: str, strategy_ids: frozenset[str]) -> dict[str, float]:
    prior = _weights(data, where, strategy_ids, "strategy")
    if abs(sum(prior.values()) - 1.0) > 0.01:
        raise WorldError(f"{where}: probabilities must sum to 1, got {sum(prior.values()):g}")
    return prior


def _success(data: object, where: str, strategy_ids: frozenset[str]) -> dict[str, float]:
    table = _weights(data, where, strategy_ids, "strategy")
    return {key: _prob(value, f"{where}.{key}") for key, value in table.items()}


def _unique(values: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise WorldError(f"{where}: duplicate {what} {value!r}")
        seen.add(value)
