"""Redaction of configured patterns before anything reaches the store."""

from __future__ import annotations

import re
from collections.abc import Callable

from proxy.config import RedactConfig

_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
# 13-19 digits with optional single spaces or dashes between groups.
_CARD = r"\b(?:\d[ \-]?){12,18}\d\b"
MASK = "[REDACTED]"


def build_redactor(cfg: RedactConfig) -> Callable[[str | None], str | None]:
    patterns = list(cfg.patterns)
    if cfg.emails:
        patterns.append(_EMAIL)
    if cfg.card_numbers:
        patterns.append(_CARD)
    if not patterns:
        return lambda text: text
    combined = re.compile("|".join(f"(?:{p})" for p in patterns))

    def redact(text: str | None) -> str | None:
        if not text:
            return text
        return combined.sub(MASK, text)

    return redact
