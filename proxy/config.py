"""Typed, frozen configuration loaded once from YAML and passed down.

Unknown keys are errors (a typo must never silently fall back to a default), and
``${VAR}`` references are resolved from the environment so secrets stay out of files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from proxy.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class UpstreamConfig:
    """The big model. Without ``base_url`` the proxy serves the embedded local model."""

    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    anthropic_base_url: str | None = None
    anthropic_api_key: str | None = None


@dataclass(frozen=True)
class RouteConfig:
    """Sends requests for matching models through litellm (non-OpenAI providers)."""

    model: str
    litellm_model: str
    api_key: str | None = None
    api_base: str | None = None


@dataclass(frozen=True)
class RedactConfig:
    emails: bool = False
    card_numbers: bool = False
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    path: str = "./data/tactician.duckdb"
    state_dir: str | None = None
    queue_size: int = 50_000
    batch_size: int = 500
    flush_interval_ms: int = 200
    redact: RedactConfig = field(default_factory=RedactConfig)


@dataclass(frozen=True)
class GuidanceConfig:
    enabled: bool = True
    mode: Literal["both", "retrieval", "model"] = "both"
    model_path: str | None = None
    budget_ms: float = 150.0
    holdout: float = 0.1
    task_source: Literal["first_user", "last_user"] = "first_user"
    cache_size: int = 4096
    similar_k: int = 200
    min_similarity: float = 0.2
    min_evidence: int = 10
    half_life: float = 250.0
    optimism: float = 0.0
    min_success: float = 0.5
    explore: float = 0.0
    explore_tries: int = 1
    explore_after: int = 40
    memory_size: int = 50_000
    threads: int = 1
    batch_threads: int = 2
    max_hint_tokens: int = 12
    adapter_poll_ms: int = 250
    seed: int = 0


@dataclass(frozen=True)
class OutcomesConfig:
    token: str | None = None
    hmac_secret: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_body_mb: float = 20.0


@dataclass(frozen=True)
class AdminConfig:
    token: str | None = None


@dataclass(frozen=True)
class LocalModelConfig:
    """The embedded default upstream: llama.cpp's OpenAI-compatible server."""

    model_path: str | None = None
    n_ctx: int = 2048
    threads: int = 2
    startup_timeout_s: float = 120.0


@dataclass(frozen=True)
class LearnerConfig:
    schedule: str | None = "0 3 * * *"
    # The whole nightly job; training gets what is left after the evaluation it must
    # leave time for (measured on this machine at the start of the run).
    max_run_seconds: float = 600.0
    max_train_seconds: float = 600.0
    threads: int = 1
    nice: int = 10
    keep_versions: int = 5
    tolerance: float = 0.02
    min_examples: int = 20


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:8787"
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    routes: tuple[RouteConfig, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    outcomes: OutcomesConfig = field(default_factory=OutcomesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    local_model: LocalModelConfig = field(default_factory=LocalModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Directory the config file was read from; relative paths resolve against it.
    base_dir: str = field(default=".", metadata={"internal": True})
    # The file itself, so the scheduled learner can be given the same config.
    source_path: str | None = field(default=None, metadata={"internal": True})

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def store_path(self) -> Path:
        return self.resolve(self.store.path)

    @property
    def state_dir(self) -> Path:
        if self.store.state_dir:
            return self.resolve(self.store.state_dir)
        return self.store_path.with_suffix(".state")


def expand_env(value: str, where: str) -> str | None:
    """Replace ``${VAR}`` / ``${VAR:-default}``; a reference to an unset variable is None."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _ENV_REF.sub(sub, value)
    if missing:
        # A whole-value reference to an unset variable means "not configured".
        if _ENV_REF.fullmatch(value):
            return None
        raise ConfigError(f"{where}: environment variable {missing[0]} is not set")
    return out


def _is_internal(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("internal"))


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not _is_internal(f)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key: {prefix}{unknown[0]}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [n for n in required if n not in kwargs]
    if absent:
        raise ConfigError(f"{where or 'config'}: missing required key {absent[0]}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where)
    if isinstance(value, str) and tp is not str and origin is not Literal:
        value = expand_env(value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}")
        return value
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return expand_env(value, where)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number")
        try:
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number") from exc
    raise ConfigError(f"{where}: unsupported type {tp}")


def _validate(cfg: Config) -> None:
    host, sep, port = cfg.listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("listen: expected host:port")
    if not 0.0 <= cfg.guidance.holdout <= 1.0:
        raise ConfigError("guidance.holdout: must be in [0, 1]")
    if not 0.0 <= cfg.guidance.explore <= 1.0:
        raise ConfigError("guidance.explore: must be in [0, 1]")
    if cfg.guidance.explore_tries < 0 or cfg.guidance.explore_after < 0:
        raise ConfigError("guidance.explore_tries, explore_after: must be >= 0")
    if not 0.0 <= cfg.guidance.min_success <= 1.0:
        raise ConfigError("guidance.min_success: must be in [0, 1]")
    if cfg.guidance.budget_ms <= 0:
        raise ConfigError("guidance.budget_ms: must be positive")
    if cfg.guidance.threads < 1 or cfg.guidance.batch_threads < 1:
        raise ConfigError("guidance.threads and guidance.batch_threads: at least 1")
    if cfg.store.queue_size < 1 or cfg.store.batch_size < 1:
        raise ConfigError("store.queue_size and store.batch_size must be positive")
    for i, pattern in enumerate(cfg.store.redact.patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"store.redact.patterns[{i}]: {exc}") from exc
    if cfg.learner.max_run_seconds <= 0 or cfg.learner.max_train_seconds <= 0:
        raise ConfigError("learner.max_run_seconds and learner.max_train_seconds must be "
                          "positive")
    if cfg.learner.schedule:
        _validate_cron(cfg.learner.schedule)


def _validate_cron(expr: str) -> None:
    if len(expr.split()) != 5:
        raise ConfigError("learner.schedule: expected a 5-field cron expression")


def load_config(source: str | Path | dict[str, Any] | None = None) -> Config:
    """Load from a YAML file path, an already-parsed mapping, or nothing (all defaults)."""
    base_dir, source_path = ".", None
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML in {path}: {exc}") from exc
        base_dir, source_path = str(path.resolve().parent), str(path.resolve())
    else:
        raw = dict(source or {})
    cfg = dataclasses.replace(_build(Config, raw, ""), base_dir=base_dir,
                              source_path=source_path)
    _validate(cfg)
    return typing.cast(Config, cfg)


def documented_keys(cls: type[Any] = Config, prefix: str = "") -> list[str]:
    """Every dotted key a user may set; the docs test checks each is documented."""
    keys: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_internal(f):
            continue
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(documented_keys(tp, f"{key}."))  # type: ignore[arg-type]
        elif get_origin(tp) is tuple and dataclasses.is_dataclass(get_args(tp)[0]):
            keys.extend(documented_keys(get_args(tp)[0], f"{key}[]."))
    return keys
