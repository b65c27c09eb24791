"""A lean HTTP/1.1 transport for httpx: asyncio protocols and httptools' C parser.

Why not httpx's default (httpcore on anyio): profiled here, it cost ~0.5 ms of CPU per
relayed call, most of what the proxy adds (docs/benchmarks.md, "Profile"). It writes
head and body in two sends, and on every request it polls each pooled socket to learn
whether the server closed it; under overload that scan grows with the pool and
throughput collapses. Here a request is one write, the event loop tells a pooled
connection that its peer closed it (``connection_lost``), and responses are parsed by
the same C parser uvicorn uses for our own server side.

Scope is what the relay needs: HTTP/1.1 with keep-alive, streamed response bodies with
back-pressure, TLS, httpx's timeouts (connect, read between chunks, pool), and
connects that race a host's addresses (``proxy.dial``). No CONNECT: when the
environment names a proxy, ``proxy.upstream`` leaves the calls to httpx's own
transports.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools
import httpx

from proxy import dial

# Reading pauses while this much of a body waits for the consumer, and resumes below
# the low mark: a slow client cannot make us buffer a whole upstream answer.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


class _Connection(asyncio.Protocol):
    """One upstream socket, carrying one exchange at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._reset(head_only=False)

    def _reset(self, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.until_close = False
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self._informational = False

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.done or not self.transport:
            # Bytes while no request is outstanding break HTTP/1.1: drop the socket.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done:
            return
        if self.head_done and self.until_close:
            # A body without length or chunking ends when the server closes.
            self.done = True
            self._wake()
        elif not self.head_done:
            self._fail(httpx.RemoteProtocolError(
                "Server disconnected without sending a response."))
        else:
            self._fail(httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"))

    # -- httptools callbacks ---------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._informational = True
            self.headers, self.reason = [], b""
            return
        self.status = status
        self.head_done = True
        lowered = {k.lower() for k, _ in self.headers}
        self.until_close = (
            b"content-length" not in lowered and b"transfer-encoding" not in lowered
            and status not in (204, 304)
        )
        if self.head_only:
            # The parser would wait for the body a HEAD answer announces but never
            # sends: end here, and never reuse the socket.
            self.done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.done:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.keep_alive = not self.head_only and self._parser.should_keep_alive()
        self.until_close = False
        self.done = True
        self._wake()

    # -- used by the transport and the body stream -----------------------------------
    async def exchange(self, payload: bytes, head_only: bool, read_timeout: float | None) -> None:
        """Send one request (head and body in one write) and wait for its head."""
        assert self.transport is not None
        self._reset(head_only)
        self.transport.write(payload)
        while not self.head_done and self.error is None:
            await self.wait(read_timeout)
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._paused and self.buffered < LOW_WATER and self.transport:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    async def wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, self._timed_out, waiter) if timeout else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def park(self) -> None:
        """Between exchanges: drop what a reader left unread, and read again so that
        the peer closing the idle socket is noticed."""
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("timed out waiting for the upstream"))

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection, which returns to the pool once the
    body has been read to its end, or is closed if the reader stops early."""

    def __init__(self, conn: _Connection, pool: Http1Transport, read_timeout: float | None):
        self._conn = conn
        self._pool = pool
        self._timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.error is not None:
                self._release()
                raise conn.error
            elif conn.done:
                break
            else:
                try:
                    await conn.wait(self._timeout)
                except httpx.ReadTimeout:
                    self._release()
                    raise
        self._release()

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class Http1Transport(httpx.AsyncBaseTransport):
    """``max_connections`` bounds requests in flight (``PoolTimeout`` after the pool
    timeout); up to ``max_idle`` kept-alive sockets per origin wait for reuse, each at
    most ``keepalive_expiry`` seconds."""

    def __init__(self, *, max_connections: int = 1000, max_idle: int = 200,
                 keepalive_expiry: float = 5.0, ssl_context: ssl.SSLContext | None = None):
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        payload = _serialize(request, await request.aread())
        origin = _origin(request.url)
        await self._acquire(timeouts.get("pool"))
        try:
            conn = self._reuse(origin) or await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._slots.release()
            raise
        try:
            await conn.exchange(payload, request.method == "HEAD", timeouts.get("read"))
        except BaseException:
            self.release(conn)
            raise
        return httpx.Response(
            conn.status, headers=conn.headers,
            stream=_Body(conn, self, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    def release(self, conn: _Connection) -> None:
        """The exchange on ``conn`` is over: keep the socket for reuse if it can be."""
        self._slots.release()
        if self._closed or not conn.reusable():
            conn.close()
            return
        conn.park()
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(conn.origin, deque())
        idle.append(conn)
        while idle and (len(idle) > self._max_idle or self._expired(idle[0])):
            idle.popleft().close()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    async def _acquire(self, timeout: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no upstream connection slot became free") from exc

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be stale
            if not conn.closed and not self._expired(conn):
                return conn
            conn.close()
        return None

    def _expired(self, conn: _Connection) -> bool:
        return conn.closed or time.monotonic() - conn.idle_since > self._expiry

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self._tls() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                sock = await dial.open_socket(origin.host, origin.port)
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(origin), sock=sock, ssl=context,
                        server_hostname=origin.host if context else None)
                except BaseException:
                    sock.close()  # a no-op where the loop already closed it
                    raise
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {origin.host}:{origin.port}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
    return Origin(scheme, url.host, url.port or (443 if scheme == "https" else 80))


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpx.LocalProtocolError(f"illegal header {name!r}")
        if name.lower() == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        lines.append(name + b": " + value)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:
        return head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head + body

