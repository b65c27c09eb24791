"""One proxied call as it moves through the proxy, and its row in the store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy import payloads

Redactor = Callable[[str | None], str | None]


@dataclass
class Call:
    request_id: str
    episode_id: str
    endpoint: str
    method: str
    provider: str = "openai"
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    body: dict[str, Any] | None = None
    raw_body: bytes = b""
    status: int | None = None
    error: str | None = None
    partial: bool = False
    completed: bool = False
    disconnected: bool = False
    stream_done: bool = False
    response_obj: dict[str, Any] | None = None
    response_raw: bytes | None = None
    upstream_start: float | None = None
    upstream_end: float | None = None
    first_byte: float | None = None
    guidance: dict[str, Any] = field(default_factory=dict)
    task_text: str | None = None
    system_text: str | None = None

    @property
    def model(self) -> str | None:
        m = (self.body or {}).get("model")
        return m if isinstance(m, str) else None

    @property
    def stream(self) -> bool:
        return bool((self.body or {}).get("stream"))

    def mark_first_byte(self) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()

    def to_row(self, redact: Redactor) -> dict[str, Any]:
        end = time.perf_counter()
        obj = self.response_obj
        if obj is None and self.response_raw:
            obj = _maybe_json(self.response_raw)
        prompt, completion, total = payloads.usage(obj) if isinstance(obj, dict) else (None,) * 3
        text = payloads.response_text(self.endpoint, obj) if isinstance(obj, dict) else None
        return {
            "request_id": self.request_id,
            "episode_id": self.episode_id,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC),
            "endpoint": self.endpoint,
            "provider": self.provider,
            "model": self.model,
            "stream": self.stream,
            "status": self.status,
            "error": self.error,
            "partial": self.partial,
            "request_json": redact(_request_text(self)),
            "response_json": redact(_response_text(obj, self.response_raw)),
            "response_text": redact(text),
            "latency_ms": (end - self.started) * 1000,
            "upstream_ms": _ms(self.upstream_start, self.upstream_end),
            "ttfb_ms": _ms(self.started, self.first_byte),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "task_text": redact(self.task_text),
            "system_text": redact(self.system_text),
            **{k: redact(v) if k == "hint_text" else v for k, v in self.guidance.items()},
        }


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (b - a) * 1000


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _request_text(call: Call) -> str | None:
    """The client's bytes as sent (before any hint), not a re-serialization."""
    return _decode(call.raw_body)


def _response_text(obj: Any, raw: bytes | None) -> str | None:
    if raw:
        return _decode(raw)
    return json.dumps(obj, ensure_ascii=False) if obj is not None else None


def _decode(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
