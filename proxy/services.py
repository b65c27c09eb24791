"""The services the routes use, built once per app and passed down (no globals)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.calls import Call, Redactor
from proxy.config import Config
from proxy.learning import LearnerJobs
from proxy.litellm_backend import LiteLLMBackend
from proxy.local_model import LocalModelServer
from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.store import Store
from proxy.traffic import Traffic
from proxy.upstream import Target, Upstream

log = logging.getLogger("tactician")


class Advisor(Protocol):
    """Decides whether and what to hint for a call (the hint engine)."""

    async def advise(self, call: Call) -> str | None:
        """Return the hint to inject, or None; fill ``call.guidance`` either way."""
        ...

    def observe_call(self, row: dict[str, Any]) -> None:
        """Learn from a finished call (its task and the strategy its answer used)."""
        ...

    def observe_outcome(self, row: dict[str, Any]) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Counters:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    outcomes: int = 0
    record_errors: int = 0


@dataclass
class Services:
    config: Config
    store: Store
    recorder: Recorder
    upstream: Upstream
    redact: Redactor
    targets: dict[str, Target]
    learner: LearnerJobs
    advisor: Advisor | None = None
    litellm: LiteLLMBackend | None = None
    local_model: LocalModelServer | None = None
    counters: Counters = field(default_factory=Counters)
    metrics: Metrics = field(default_factory=Metrics)
    traffic: Traffic = field(default_factory=Traffic)

    @property
    def body_limit(self) -> int:
        return int(self.config.limits.max_body_mb * 1024 * 1024)

    def target(self, name: str) -> Target | None:
        return self.targets.get(name)

    def litellm_route(self, call: Call) -> LiteLLMBackend | None:
        if self.litellm is None or not call.endpoint.endswith("/chat/completions"):
            return None
        return self.litellm if self.litellm.match(call.model) else None

    def adapter_version(self) -> str | None:
        """The adapter the hint engine is serving, if any."""
        if self.advisor is None:
            return None
        version = self.advisor.stats().get("adapter_version")
        return str(version) if version else None

    async def advise(self, call: Call) -> str | None:
        if self.advisor is None:
            return None
        return await self.advisor.advise(call)

    def finish(self, call: Call) -> None:
        """Hand a finished call to the recorder. Never raises: recording must not
        break serving."""
        self.counters.requests[(call.endpoint, call.status or 0)] += 1
        try:
            self.metrics.observe(call)
            row = call.to_row(self.redact)
            self.recorder.record("calls", row)
            if self.advisor is not None:
                self.advisor.observe_call(row)
        except Exception:
            self.counters.record_errors += 1
            self.metrics.record_errors.inc()
            log.exception("could not record call %s", call.request_id)

    def accept_outcome(self, row: dict[str, Any]) -> None:
        self.recorder.record("outcomes", row)
        self.counters.outcomes += 1
        self.metrics.outcomes.inc()
        if self.advisor is not None:
            try:
                self.advisor.observe_outcome(row)
            except Exception:
                log.exception("hint memory could not take outcome %s", row["outcome_id"])
