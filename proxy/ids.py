"""Identifiers: UUIDv7 (time-ordered, so ids sort by arrival) and episode id checks."""

from __future__ import annotations

import os
import re
import time
import uuid

from proxy.errors import BadRequest

_EPISODE_RE = re.compile(r"[A-Za-z0-9._:\-]{1,200}")


def uuid7() -> str:
    """RFC 9562 UUIDv7: 48-bit millisecond timestamp, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def valid_id(value: str) -> bool:
    """Episode ids (and our request ids) are letters, digits and ``._:-``, so that
    the header and the webhook accept the same ones."""
    return _EPISODE_RE.fullmatch(value) is not None


def check_episode_id(value: str) -> str:
    if not valid_id(value):
        raise BadRequest(
            "x-episode-id must be 1-200 characters of letters, digits, '.', '_', ':' or '-'",
            param="x-episode-id",
            code="invalid_episode_id",
        )
    return value
