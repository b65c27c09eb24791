"""The lean HTTP/1.1 upstream transport against a scripted server on a real socket.

The server reads each request whole and answers with exactly the bytes a test scripts,
so framing (length, chunked, until-close), keep-alive, stale sockets, timeouts and
truncation are checked byte for byte, which a framework server would smooth over.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from proxy import dial
from proxy.transport import HIGH_WATER, Http1Transport
from proxy.upstream import Target, Upstream, default_transport

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """Accepts connections; for each request calls ``answer(request, writer)``, which
    writes the response and returns whether to keep the connection open."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.answer(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def fixed(body: bytes, extra: bytes = b"") -> Answer:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s"
                     % (len(body), extra, body))
        await writer.drain()
        return b"connection: close" not in extra.lower()
    return answer


def run(main: Callable[[], Awaitable[None]]) -> None:
    """On asyncio's own loop and on uvloop, which the proxy runs on when installed."""
    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(main(), 30))


def client(**kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http1Transport(**kw), timeout=httpx.Timeout(5.0))


def test_one_write_keep_alive_and_reuse() -> None:
    async def main() -> None:
        async with Scripted(fixed(b'{"ok":1}')) as srv, client() as c:
            for i in range(5):
                r = await c.post(srv.url + "/v1/x?a=1", content=b'{"n":%d}' % i,
                                 headers={"authorization": "Bearer k"})
                assert (r.status_code, r.content, r.reason_phrase) == (200, b'{"ok":1}', "OK")
            assert srv.connections == 1
            first = srv.requests[0]
            assert first.startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
            assert b"\r\nhost: 127.0.0.1:" in first.lower()
            assert b"\r\ncontent-length: 7\r\n" in first.lower()
            assert first.endswith(b'\r\n\r\n{"n":0}')
    run(main)


def test_chunked_and_until_close_bodies() -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                     b"content-type: text/event-stream\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    async def until_close(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it, then EOF")
        return False

    async def main() -> None:
        async with Scripted(chunked) as srv, client() as c:
            async with c.stream("GET", srv.url + "/s") as r:
                parts = [p async for p in r.aiter_raw()]
            assert b"".join(parts) == b"data: 1\n\ndata: 2\n\n"
            await c.get(srv.url + "/s")
            assert srv.connections == 1
        async with Scripted(until_close) as srv, client() as c:
            assert (await c.get(srv.url)).content == b"all of it, then EOF"
            assert (await c.get(srv.url)).content == b"all of it, then EOF"
            assert srv.connections == 2
    run(main)


def test_connection_close_and_stale_sockets_are_not_reused() -> None:
    async def main() -> None:
        async with Scripted(fixed(b"x", b"connection: close\r\n")) as srv, client() as c:
            for _ in range(3):
                assert (await c.get(srv.url)).content == b"x"
            assert srv.connections == 3

        async def once(request: bytes, writer: asyncio.StreamWriter) -> bool:
            # Keep-alive announced, then the server drops the idle socket anyway.
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\ny")
            await writer.drain()
            return False
        async with Scripted(once) as srv, client() as c:
            for _ in range(3):
                assert (await c.get(srv.url)).content == b"y"
                await asyncio.sleep(0.05)  # the FIN reaches the pooled socket
            assert srv.connections == 3

        async with Scripted(fixed(b"z")) as srv, client(keepalive_expiry=0.05) as c:
            await c.get(srv.url)
            await asyncio.sleep(0.1)
            await c.get(srv.url)
            assert srv.connections == 2
    run(main)


def test_truncated_answers_raise_protocol_errors() -> None:
    async def no_answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async def short_body(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()
        return False

    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        return True

    async def main() -> None:
        async with Scripted(no_answer) as srv, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await c.get(srv.url)
        async with Scripted(short_body) as srv, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
                await c.get(srv.url)
        async with Scripted(garbage) as srv, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match="invalid HTTP response"):
                await c.get(srv.url)
    run(main)


def test_timeouts_connect_errors_and_pool_limit() -> None:
    async def stalls_mid_body(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async def main() -> None:
        async with Scripted(stalls_mid_body) as srv:
            port = srv.url.rsplit(":", 1)[1]
            async with httpx.AsyncClient(transport=Http1Transport(),
                                         timeout=httpx.Timeout(0.2)) as c:
                with pytest.raises(httpx.ReadTimeout):
                    await c.get(srv.url)
            one_slot = httpx.AsyncClient(transport=Http1Transport(max_connections=1),
                                         timeout=httpx.Timeout(3.0, pool=0.1))
            async with one_slot as c, c.stream("GET", srv.url):
                with pytest.raises(httpx.PoolTimeout):
                    await c.get(srv.url)
        async with client() as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"http://127.0.0.1:{port}/")
    run(main)


def test_interim_head_and_no_content_answers() -> None:
    async def interim(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if request.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n")
        elif b"/empty" in request:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async def main() -> None:
        async with Scripted(interim) as srv, client() as c:
            r = await c.post(srv.url, content=b"{}")
            assert (r.status_code, r.headers["x-a"], r.content) == (201, "1", b"ok")
            head = await c.head(srv.url)
            assert (head.status_code, head.content) == (200, b"")
            empty = await c.get(srv.url + "/empty")
            assert (empty.status_code, empty.content) == (204, b"")
            assert (await c.post(srv.url, content=b"{}")).content == b"ok"
    run(main)


def test_large_body_under_back_pressure_and_early_close() -> None:
    big = bytes(range(256)) * (16 * HIGH_WATER // 256)

    async def main() -> None:
        async with Scripted(fixed(big)) as srv, client() as c:
            async with c.stream("GET", srv.url) as r:
                await asyncio.sleep(0.3)  # nobody reads: the socket must stop being read
                held = r.stream._stream._conn.buffered  # type: ignore[attr-defined]
                assert 0 < held < 2 * HIGH_WATER
                got = bytearray()
                async for chunk in r.aiter_raw():
                    got += chunk
                    await asyncio.sleep(0)  # a slow reader: reading pauses and resumes
            assert bytes(got) == big
            async with c.stream("GET", srv.url) as r:
                async for _ in r.aiter_raw():
                    break  # a client that hangs up mid-body: that socket must not be reused
            assert (await c.get(srv.url)).content == big
            assert srv.connections == 2
    run(main)


def test_a_whole_body_left_unread_keeps_its_socket_usable() -> None:
    body = b"x" * (HIGH_WATER + 1000)  # arrives whole, but pauses reading on the way

    async def main() -> None:
        async with Scripted(fixed(body)) as srv, client() as c:
            async with c.stream("GET", srv.url) as r:
                await asyncio.sleep(0.2)
                async for _ in r.aiter_raw():
                    break
            assert (await c.get(srv.url)).content == body
            assert srv.connections == 1
    run(main)


def test_illegal_header_values_are_refused_before_sending() -> None:
    async def main() -> None:
        async with Scripted(fixed(b"")) as srv, client() as c:
            request = c.build_request("GET", srv.url)
            request.headers["x-evil"] = "a\r\nx-injected: 1"
            with pytest.raises(httpx.LocalProtocolError):
                await c.send(request)
            assert srv.requests == []
    run(main)


def test_tls_to_a_self_signed_origin(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        srv = Scripted(fixed(b"secure"))
        server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(transport=Http1Transport(ssl_context=client_ctx)) as c:
                for _ in range(2):
                    assert (await c.get(f"https://localhost:{port}/")).content == b"secure"
            assert srv.connections == 1
            async with client() as c:  # the default trust store does not know this cert
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await c.get(f"https://localhost:{port}/")
        finally:
            server.close()
    run(main)


def test_upstream_goes_through_a_proxy_named_in_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx ignores HTTP(S)_PROXY once given a transport: the upstream must notice the
    proxy and leave the calls to httpx's own transports, which use it."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert isinstance(default_transport(), Http1Transport)

    async def main() -> None:
        async with Scripted(fixed(b"via the proxy")) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            upstream = Upstream(timeout_s=5, connect_timeout_s=5)
            target = Target("http://big-model.invalid/v1", "sk-test", "authorization")
            resp = await upstream.send(target, "POST", "/chat/completions", b"",
                                       {"content-type": "application/json"}, b"{}")
            assert await resp.aread() == b"via the proxy"
            await resp.aclose()
            await upstream.aclose()
            assert proxy.requests[0].startswith(
                b"POST http://big-model.invalid/v1/chat/completions HTTP/1.1\r\n")
    run(main)


def test_a_silent_address_does_not_hold_up_the_next_one() -> None:
    """RFC 8305: when the first address drops SYNs (here a listener whose accept queue is
    full), the next one is tried 250 ms later instead of after the connect timeout."""
    async def main() -> None:
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        filler = socket.create_connection(silent.getsockname())  # the queue is now full
        try:
            async with Scripted(fixed(b"")) as srv:
                good = ("127.0.0.1", int(srv.url.rsplit(":", 1)[1]))
                tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
                t0 = time.perf_counter()
                sock = await dial.race([(*tcp, silent.getsockname()), (*tcp, good)])
                elapsed = time.perf_counter() - t0
                assert sock.getpeername() == good
                sock.close()
                assert dial.ATTEMPT_DELAY_S <= elapsed < 1.0
        finally:
            filler.close()
            silent.close()
    run(main)


def test_address_families_alternate() -> None:
    v6a = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 1))
    v6b = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::2", 1))
    v4a = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 1))
    assert dial.interleave([v6a, v6b, v4a]) == [v6a, v4a, v6b]
