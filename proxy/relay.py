"""The relay: one ASGI handler per forwarded route.

It reads the body under the size limit, assigns identity, lets guidance add a hint,
forwards over httpx (or litellm for routed models), relays the answer byte for byte,
and hands the finished call to the recorder. The client's bytes are forwarded as-is
unless a hint was injected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import httpx

from proxy import payloads
from proxy.calls import Call
from proxy.errors import BadRequest, BodyTooLarge, InvalidJSON, TacticianError, error_bytes
from proxy.ids import check_episode_id, uuid7
from proxy.sse import StreamAssembler
from proxy.upstream import map_stream_error, request_headers, response_headers

if TYPE_CHECKING:
    from proxy.services import Services

log = logging.getLogger("tactician.relay")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer
# Bodies that are not JSON (audio, file contents) are relayed as they arrive; the
# record keeps them only up to this size.
RECORD_BODY_MAX = 1 << 20


class ClientGone(Exception):
    """The client hung up before its request body was complete."""


def upstream_path(scope: Scope) -> str:
    """The path as the client sent it, still percent-encoded, so that an encoded
    ``/`` or ``?`` inside a file id reaches the upstream as it was written. Dot
    segments are refused: they would walk out of ``/v1`` on the upstream host, which
    is given the proxy's own credential."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"])
    if any(unquote(seg) in (".", "..") for seg in path.split("/")):
        raise BadRequest("the path must not contain '.' or '..' segments",
                         code="invalid_path")
    return path


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body exceeds the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def parse_object(raw: bytes) -> dict[str, Any]:
    obj = payloads.parse_json(raw, "request body")
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    return obj


def identity_headers(call: Call) -> list[tuple[bytes, bytes]]:
    return [(b"x-request-id", call.request_id.encode()),
            (b"x-episode-id", call.episode_id.encode())]


async def send_error(send: Send, call: Call, err: TacticianError) -> None:
    body = error_bytes(err)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *err.headers,
               *identity_headers(call)]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Relay:
    """Forwards one API surface. ``guided``: the hint engine may inject a hint;
    ``json_body``: the body must be a JSON object (400 otherwise)."""

    def __init__(self, services: Services, *, target: str, json_body: bool, guided: bool):
        self.svc = services
        self.target = target
        self.json_body = json_body
        self.guided = guided

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call(request_id=uuid7(), episode_id="", endpoint=scope["path"],
                    method=scope["method"], provider=self.target)
        call.episode_id = call.request_id
        started = False
        self.svc.traffic.begin()

        async def tracked_send(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self._handle(call, scope, receive, tracked_send)
        except TacticianError as err:
            call.error = err.message
            if not started:
                call.status = err.status
                await send_error(send, call, err)
            else:
                # Headers are gone; closing the connection mid-body is how an HTTP
                # proxy tells the client the upstream broke.
                log.warning("request %s: %s after response start", call.request_id, err.message)
        except ClientGone:
            # Nothing to answer and nothing went wrong on our side: record it quietly.
            call.partial, call.error, call.status = True, "client disconnected", CLIENT_CLOSED
        except asyncio.CancelledError:
            call.partial, call.error = True, call.error or "client disconnected"
            call.status = call.status or CLIENT_CLOSED
            raise
        finally:
            self.svc.traffic.end()
            self.svc.finish(call)

    async def _handle(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        path = upstream_path(scope)
        episode = header(scope, b"x-episode-id")
        if episode:
            call.episode_id = check_episode_id(episode)
        call.raw_body = await read_body(scope, receive, self.svc.body_limit)
        if self.json_body:
            call.body = parse_object(call.raw_body)
        elif call.raw_body:
            try:
                parsed = payloads.parse_json(call.raw_body, "request body")
                call.body = parsed if isinstance(parsed, dict) else None
            except InvalidJSON:
                call.body = None
        content = call.raw_body
        if call.body is not None:
            content = await self._guide(call, content)
        litellm = self.svc.litellm_route(call)
        host = asyncio.current_task()
        assert host is not None
        watcher = asyncio.create_task(_watch_disconnect(receive, host, call))
        try:
            if litellm is not None:
                call.provider = "litellm"
                await litellm.handle(call, json.loads(content), send, identity_headers(call))
            else:
                await self._forward(call, scope, path, content, send)
        except asyncio.CancelledError:
            # Our own watcher cancelled us because the client left: that ends the call.
            if call.disconnected and host.uncancel() == 0:
                return
            raise
        finally:
            watcher.cancel()

    async def _guide(self, call: Call, content: bytes) -> bytes:
        assert call.body is not None
        call.task_text = payloads.task_text(call.endpoint, call.body,
                                            self.svc.config.guidance.task_source)
        call.system_text = payloads.system_text(call.endpoint, call.body) or None
        if not self.guided:
            return content
        hint = await self.svc.advise(call)
        if hint is None:
            return content
        injected = payloads.inject_hint(call.endpoint, call.body, hint,
                                        self.svc.config.guidance.hint_position)
        if injected is None:
            return content
        text = json.dumps(injected, ensure_ascii=False)
        try:
            return text.encode()
        except UnicodeEncodeError:
            # A lone surrogate (an escaped "\ud800" from a client that cut a string
            # mid-emoji) has no UTF-8 form: send it escaped, as the client did.
            return json.dumps(injected).encode()

    async def _forward(self, call: Call, scope: Scope, path: str, content: bytes,
                       send: Send) -> None:
        target = self.svc.target(self.target)
        if self.target != "anthropic" or (target and target.base_url.rstrip("/").endswith("/v1")):
            path = path[3:] if path.startswith("/v1") else path
        headers = request_headers(scope["headers"], target) if target else []
        call.upstream_start = time.perf_counter()
        resp = await self.svc.upstream.send(
            target, scope["method"], path, scope.get("query_string", b""), headers,
            content if content else None,
        )
        try:
            await self._relay(call, resp, send)
        finally:
            # Closing the stream mid-body drops the upstream connection: that is how
            # a client disconnect cancels the upstream request.
            await resp.aclose()
            call.upstream_end = time.perf_counter()

    async def _relay(self, call: Call, resp: httpx.Response, send: Send) -> None:
        call.status = resp.status_code
        headers = response_headers(resp)
        upstream_id = resp.headers.get("x-request-id")
        headers = [(k, v) for k, v in headers if k not in (b"x-request-id", b"x-episode-id")]
        if upstream_id:
            headers.append((b"x-upstream-request-id", upstream_id.encode("latin-1")))
        headers.extend(identity_headers(call))
        media = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if media.startswith("text/event-stream"):
            await self._relay_events(call, resp, send, headers)
        elif not media or "json" in media:
            # JSON answers are read whole: they are the record, and clients parse
            # them whole anyway; an upstream failing mid-body still gets a 502.
            body = await _read_all(resp)
            call.response_raw = body
            call.mark_first_byte()
            call.completed = True
            # HEAD: the upstream's length is the answer (the body is empty by definition).
            length = resp.headers.get("content-length") if call.method == "HEAD" else None
            headers.append((b"content-length", (length or str(len(body))).encode()))
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:
            await self._relay_body(call, resp, send, headers, record=_textual(media))

    async def _relay_events(self, call: Call, resp: httpx.Response, send: Send,
                            headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": headers})
        assembler = StreamAssembler(call.endpoint)
        try:
            async with aclosing(_chunks(call, resp)) as chunks:
                async for chunk in chunks:
                    assembler.feed(chunk)
                    # A client may hang up right after the terminal event: nothing lost.
                    call.stream_done = assembler.done
                    call.mark_first_byte()
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
            call.completed = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            call.response_obj = assembler.result()

    async def _relay_body(self, call: Call, resp: httpx.Response, send: Send,
                          headers: list[tuple[bytes, bytes]], *, record: bool) -> None:
        """Audio, file contents and other bodies go out as they arrive; a textual
        body is kept for the record up to ``RECORD_BODY_MAX`` bytes."""
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": headers})
        kept: list[bytes] | None = [] if record else None
        size = 0
        try:
            async with aclosing(_chunks(call, resp)) as chunks:
                async for chunk in chunks:
                    call.mark_first_byte()
                    size += len(chunk)
                    if kept is not None and size <= RECORD_BODY_MAX:
                        kept.append(chunk)
                    else:
                        kept = None
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
            call.completed = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            call.response_raw = b"".join(kept) if kept else None


def _textual(media: str) -> bool:
    return media.startswith("text/") or "xml" in media


async def _chunks(call: Call, resp: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The upstream body as it arrives, decoded (an upstream that compresses despite
    our ``accept-encoding: identity`` still reaches the client readable, as the
    ``content-encoding`` header is not relayed)."""
    try:
        async for chunk in resp.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        call.partial = True
        mapped = map_stream_error(exc)
        raise (mapped or exc) from exc


async def _read_all(resp: httpx.Response) -> bytes:
    try:
        return await resp.aread()
    except httpx.HTTPError as exc:
        mapped = map_stream_error(exc)
        raise (mapped or exc) from exc


async def _watch_disconnect(receive: Receive, host: asyncio.Task[Any], call: Call) -> None:
    """Cancel the upstream request as soon as the client goes away."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            if call.completed or call.stream_done:
                # The server reports completion as a disconnect, and clients may hang
                # up right after the terminal event: neither loses anything.
                return
            call.partial = call.disconnected = True
            call.error = call.error or "client disconnected"
            if call.status is None:
                call.status = CLIENT_CLOSED
            host.cancel()
            return
