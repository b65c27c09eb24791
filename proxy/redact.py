"""Redaction of configured patterns before anything reaches the store."""

from __future__ import annotations

import re
from collections.abc import Callable

from proxy.config import RedactConfig

_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
# 13-19 digits with optional single spaces or dashes between groups.
_CARD = r"\b(?:\d[ \-]?){12,18}\d\b"
# API keys and tokens a prompt or an upstream error may quote ("Incorrect API key
# provided: sk-..."): OpenAI/Anthropic-style keys, bearer tokens, AWS key ids, GitHub
# and Slack tokens. Long enough that ordinary words never match.
_CREDENTIAL = (r"\bsk-[A-Za-z0-9_\-]{16,}|\bBearer\s+[A-Za-z0-9._~+/\-]{16,}=*"
               r"|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}|\bxox[abpr]-[A-Za-z0-9\-]{10,}")
_CREDENTIAL_RE = re.compile(_CREDENTIAL)
_CREDENTIAL_MARKERS = ("sk-", "Bearer", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox")
MASK = "[REDACTED]"


def build_redactor(cfg: RedactConfig) -> Callable[[str | None], str | None]:
    patterns = list(cfg.patterns)
    if cfg.emails:
        patterns.append(_EMAIL)
    if cfg.card_numbers:
        patterns.append(_CARD)
    steps = [_always(re.compile("|".join(f"(?:{p})" for p in patterns)))] if patterns else []
    if cfg.credentials:
        steps.append(_credentials)
    if not steps:
        return lambda text: text

    def redact(text: str | None) -> str | None:
        if not text:
            return text
        for step in steps:
            text = step(text)
        return text

    return redact


def _always(pattern: re.Pattern[str]) -> Callable[[str], str]:
    return lambda text: pattern.sub(MASK, text)


def _credentials(text: str) -> str:
    # This runs on every call by default, on the event loop: a substring test is ~50x
    # cheaper than the regex scan, and almost no text holds a key.
    if any(marker in text for marker in _CREDENTIAL_MARKERS):
        return _CREDENTIAL_RE.sub(MASK, text)
    return text
