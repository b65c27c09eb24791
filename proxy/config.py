"""Typed, frozen configuration loaded once from YAML and passed down.

Unknown keys are errors (a typo must never silently fall back to a default), and
``${VAR}`` references are resolved from the environment so secrets stay out of files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import yaml

from proxy.errors import ConfigError, UnknownConfigKey
from proxy.typed_tree import Range, build, expand_tree, is_internal

# Sizes, counts, threads and poll intervals, where 0 divides by zero, busy-loops or
# does nothing.
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
# Timeouts and budgets: 0 would fail every call.
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]
# A difference of two accuracies or a cosine similarity: beyond ±1 it is a typo (2 for 2 %).
SignedFraction = Annotated[float, Range(ge=-1, le=1)]


# Keys renamed by a release: still unknown, and the error names the new one.
RENAMED = MappingProxyType({
    "guidance.meaning_f16": ("guidance.model_f16",
                             "it now covers the small model's labels, not only its embeddings"),
})


@dataclass(frozen=True)
class UpstreamConfig:
    """The big model. Without ``base_url`` the proxy serves the embedded local model."""

    base_url: str | None = None
    api_key: str | None = None
    timeout_s: PositiveFloat = 600.0
    connect_timeout_s: PositiveFloat = 10.0
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
    credentials: bool = True
    emails: bool = False
    card_numbers: bool = False
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    path: str = "./data/tactician.duckdb"
    state_dir: str | None = None
    queue_size: PositiveInt = 50_000
    batch_size: PositiveInt = 500
    flush_interval_ms: PositiveInt = 200
    redact: RedactConfig = field(default_factory=RedactConfig)


@dataclass(frozen=True)
class GuidanceConfig:
    enabled: bool = True
    mode: Literal["both", "retrieval", "model"] = "both"
    model_path: str | None = None
    model_f16: bool = True
    budget_ms: PositiveFloat = 150.0
    holdout: Fraction = 0.1
    task_source: Literal["first_user", "last_user"] = "first_user"
    hint_position: Literal["end", "start"] = "end"
    cache_size: PositiveInt = 4096
    similar_k: PositiveInt = 200
    min_similarity: SignedFraction = 0.2
    min_evidence: NonNegativeInt = 10
    half_life: NonNegativeFloat = 250.0  # 0: no fading
    optimism: NonNegativeFloat = 0.0
    pessimism: NonNegativeFloat = 0.5
    min_success: Fraction = 0.5
    explore: Fraction = 0.0
    explore_tries: NonNegativeInt = 1
    explore_after: NonNegativeInt = 40
    mediocre_below: Fraction = 0.6  # 0: never
    meaning: bool = True
    meaning_k: PositiveInt = 20
    meaning_min_similarity: SignedFraction = 0.1
    meaning_challenge_below: Fraction = 0.65  # 0: never
    meaning_challenge_tries: NonNegativeInt = 3
    memory_size: PositiveInt = 50_000
    threads: PositiveInt = 1
    batch_threads: PositiveInt = 2
    max_hint_tokens: PositiveInt = 12
    adapter_poll_ms: PositiveInt = 250
    yield_lag_ms: NonNegativeFloat = 20.0  # 0: no lag limit (the contexts still take turns)
    seed: int = 0


@dataclass(frozen=True)
class OutcomesConfig:
    token: str | None = None
    hmac_secret: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_body_mb: PositiveFloat = 20.0


@dataclass(frozen=True)
class AdminConfig:
    token: str | None = None


@dataclass(frozen=True)
class LocalModelConfig:
    """The embedded default upstream: llama.cpp's OpenAI-compatible server."""

    model_path: str | None = None
    n_ctx: NonNegativeInt = 2048  # 0: the model's own context length (llama.cpp)
    threads: PositiveInt = 2
    startup_timeout_s: PositiveFloat = 120.0


@dataclass(frozen=True)
class LearnerConfig:
    schedule: str | None = "0 3 * * *"
    # The whole nightly job; training gets what is left after the evaluation it must
    # leave time for (measured on this machine at the start of the run).
    max_run_seconds: PositiveFloat = 600.0
    max_train_seconds: PositiveFloat = 600.0
    threads: PositiveInt = 1
    # While the proxy has served nothing for idle_after_seconds (or is not running),
    # the run may use this many threads (None: every core it may run on).
    idle_threads: PositiveInt | None = None
    idle_after_seconds: NonNegativeFloat = 30.0
    nice: Annotated[int, Range(ge=-20, le=19)] = 10
    keep_versions: PositiveInt = 5
    tolerance: SignedFraction = 0.02
    min_examples: PositiveInt = 20


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


def _validate(cfg: Config) -> None:
    """Checks beyond each key's type and range (those are on the dataclass fields)."""
    _validate_listen(cfg.listen)
    for i, pattern in enumerate(cfg.store.redact.patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"store.redact.patterns[{i}]: {exc}") from exc
    if cfg.learner.schedule:
        _validate_cron(cfg.learner.schedule)


def _validate_listen(listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ConfigError("listen: expected host:port")
    if int(port) > 65535:
        raise ConfigError(f"listen: port must be 0-65535 (0: any free port), got {port}")


def _validate_cron(expr: str) -> None:
    if len(expr.split()) != 5:
        raise ConfigError("learner.schedule: expected a 5-field cron expression")
    # Imported here: croniter is slow to import and only a schedule needs it.
    from croniter import croniter  # noqa: PLC0415

    # Asking for the next run, not just parsing, also catches dates that never come
    # ("0 0 31 2 *"): the learner thread does exactly this.
    try:
        croniter(expr, datetime.now().astimezone()).get_next(datetime)
    except ValueError as exc:  # croniter's errors are ValueErrors
        raise ConfigError(f"learner.schedule: invalid cron expression {expr!r}: {exc}") from exc


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
    try:
        tree = build(Config, expand_tree(raw, ""), "")
    except UnknownConfigKey as exc:
        renamed = RENAMED.get(exc.param or "")
        if renamed is None:
            raise
        raise ConfigError(f"{exc.message} (renamed {renamed[0]}: {renamed[1]})",
                          param=exc.param) from None
    cfg = dataclasses.replace(tree, base_dir=base_dir, source_path=source_path)
    _validate(cfg)
    return typing.cast(Config, cfg)


def documented_keys(cls: type[Any] = Config, prefix: str = "") -> list[str]:
    """Every dotted key a user may set; the docs test checks each is documented."""
    keys: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_internal(f):
            continue
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(documented_keys(tp, f"{key}."))  # type: ignore[arg-type]
        elif get_origin(tp) is tuple and dataclasses.is_dataclass(get_args(tp)[0]):
            keys.extend(documented_keys(get_args(tp)[0], f"{key}[]."))
    return keys
