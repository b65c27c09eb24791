"""Open a TCP connection to a host name the way RFC 8305 ("Happy Eyeballs") asks.

Why: a host such as api.openai.com resolves to IPv6 and IPv4 addresses. Where IPv6 is
routed but silently dropped, trying the addresses one after another waits out the whole
connect timeout on the first. Here the addresses are interleaved by family and a new
attempt starts every 250 ms while earlier ones are still pending; the first to connect
wins and the rest are closed. uvloop's ``create_connection`` has no such option, so the
socket is opened here and handed to it.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from asyncio import staggered
from typing import Any

ATTEMPT_DELAY_S = 0.25  # RFC 8305's recommended connection attempt delay

AddrInfo = tuple[Any, ...]  # as socket.getaddrinfo returns them


async def open_socket(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return await race(infos)


async def race(infos: list[AddrInfo], delay: float = ATTEMPT_DELAY_S) -> socket.socket:
    """Connect to the first address that answers; raises the last error if none does."""
    if not infos:
        raise OSError("the host name resolves to no address")
    attempts = [functools.partial(_attempt, info) for info in interleave(infos)]
    sock, _, errors = await staggered.staggered_race(attempts, delay)
    if not isinstance(sock, socket.socket):
        raise next(e for e in reversed(errors) if e is not None)
    return sock


def interleave(infos: list[AddrInfo]) -> list[AddrInfo]:
    """Alternate address families, starting with the resolver's first choice."""
    families: dict[int, list[AddrInfo]] = {}
    for info in infos:
        families.setdefault(info[0], []).append(info)
    queues = list(families.values())
    out: list[AddrInfo] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


async def _attempt(info: AddrInfo) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        # Failed, or lost the race while pending: never leak the socket.
        sock.close()
        raise
    return sock
