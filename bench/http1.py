"""Just enough HTTP/1.1 parsing for the load generator and the mock upstream, which both
speak it on raw asyncio streams."""

from __future__ import annotations


def parse_headers(block: bytes) -> dict[str, str]:
    """The header fields of a message head (its start line has no colon and is
    skipped), names lower-cased."""
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
