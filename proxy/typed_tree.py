"""Frozen dataclass trees from parsed YAML: the machinery behind ``proxy.config``.

Every ``${VAR}`` is resolved before any key is typed, so all keys treat references
alike; unknown keys are errors; numbers meet the ``Range`` on their field's type.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from proxy.errors import ConfigError, UnknownConfigKey

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Range:
    """Bounds a numeric key must meet, checked at load: a meaningless value is then a
    ConfigError naming the key instead of a crash or a silent misbehaviour much later."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def allows(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))

    def describe(self) -> str:
        bounds = [(">=", self.ge), (">", self.gt), ("<=", self.le)]
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)



@dataclass(frozen=True)
class _Unset:
    """A value that was only a reference to an unset or empty variable: the key is absent."""

    var: str


def _expand_env(value: str, where: str) -> str | _Unset:
    """Replace ``${VAR}`` / ``${VAR:-default}``; an empty variable counts as unset (as in
    the shell's ``:-``). A value that is one reference and comes out empty is ``_Unset``;
    an unset variable inside a longer string is an error."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _ENV_REF.sub(sub, value)
    whole = _ENV_REF.fullmatch(value)
    if whole and not out:
        return _Unset(whole.group(1))
    if missing:
        raise ConfigError(f"{where}: environment variable {missing[0]} is not set (or is "
                          "empty)")
    return out


def expand_tree(raw: Any, where: str) -> Any:
    """Resolve every ``${VAR}`` in the parsed YAML before any key is typed, so each key,
    whatever its type, treats references alike."""
    if isinstance(raw, dict):
        return {k: expand_tree(v, f"{where}.{k}" if where else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_expand_item(v, f"{where}[{i}]") for i, v in enumerate(raw)]
    if isinstance(raw, str):
        return _expand_env(raw, where)
    return raw


def _expand_item(raw: Any, where: str) -> Any:
    value = expand_tree(raw, where)
    if isinstance(value, _Unset):
        # Not dropped: silently losing, say, a redaction pattern would be worse than failing.
        raise ConfigError(f"{where}: environment variable {value.var} is not set")
    return value


def is_internal(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("internal"))


def build(cls: type[Any], raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if not is_internal(f)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise UnknownConfigKey(f"unknown config key: {key}", param=key)
    # A reference to an unset variable is an absent key: its default applies.
    kwargs = {name: _coerce(hints[name], value, prefix + name)
              for name, value in raw.items() if not isinstance(value, _Unset)}
    for name, f in fields.items():
        if name not in kwargs and _required(f):
            raise ConfigError(_missing_message(where, name, raw.get(name)))
    return cls(**kwargs)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _missing_message(where: str, name: str, raw: Any) -> str:
    if isinstance(raw, _Unset):
        key = f"{where}.{name}" if where else name
        return f"{key}: required, but environment variable {raw.var} is not set"
    return f"{where or 'config'}: missing required key {name}"


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Annotated:
        return _bounded(args[0], args[1:], value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}")
        return value
    return _scalar(tp, value, where)


def _bounded(tp: Any, meta: tuple[Any, ...], value: Any, where: str) -> Any:
    out = _coerce(tp, value, where)
    for bounds in meta:
        if isinstance(bounds, Range) and not bounds.allows(out):
            raise ConfigError(f"{where}: must be {bounds.describe()}, got {out!r}")
    return out


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if tp is int:
        return _integer(value, where)
    if tp is float:
        return _real(value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _integer(value: Any, where: str) -> int:
    # int() would truncate 2.9 to 2 and accept true as 1: both hide a mistake.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _real(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number")
    try:
        out = float(value)
    except (ValueError, OverflowError) as exc:  # OverflowError: an int beyond any float
        raise ConfigError(f"{where}: expected a number") from exc
    # NaN passes every range check (all comparisons are false); infinity overflows sizes.
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return out
