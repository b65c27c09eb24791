"""A fake remote big model on a real loopback socket.

Behaviour is chosen by the request's ``model`` so tests stay readable:
``tools`` answers with a tool call, ``error-<status>`` answers that status with an
OpenAI error body (429 adds retry-after), ``slow-<ms>`` waits before answering,
``drop`` cuts a stream after two chunks, ``echo-headers`` returns the headers it got.
Streams pause ``chunk_delay`` between chunks so tests can see them arrive one by one.
Every request is kept in ``received`` so tests can check what the upstream saw.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = ["Hello", " from", " the", " fake", " upstream", "."]
AUDIO_CHUNKS = 5


class FakeUpstream:
    def __init__(self, chunk_delay: float = 0.05) -> None:
        self.chunk_delay = chunk_delay
        self.received: list[dict[str, Any]] = []
        self.cancelled = 0
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/files/{fid}", self.files, methods=["GET", "DELETE"]),
            Route("/v1/audio/speech", self.speech, methods=["POST"]),
            Route("/v1/gzip-events", self.gzip_events, methods=["POST"]),
            Route("/v1/raw/{rest:path}", self.raw, methods=["GET", "POST"]),
        ])

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.received.append({"path": request.url.path, "headers": dict(request.headers),
                              "body": body, "raw": raw})
        return body

    async def _behaviour(self, body: dict[str, Any]) -> Response | None:
        model = str(body.get("model", ""))
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            headers = {"retry-after": "7"} if status == 429 else {}
            err = {"error": {"message": f"fake {status}", "type": "fake_error",
                             "param": None, "code": f"fake_{status}"}}
            return JSONResponse(err, status_code=status, headers=headers)
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-")[1]) / 1000)
        return None

    async def chat(self, request: Request) -> Response:
        body = await self._record(request)
        early = await self._behaviour(body)
        if early is not None:
            return early
        model = body.get("model", "fake")
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage", False)
            return StreamingResponse(self._chat_stream(body, model, usage),
                                     media_type="text/event-stream",
                                     headers={"x-request-id": "req_upstream_1"})
        n = int(body.get("n", 1))
        if model == "echo-headers":
            content = json.dumps(self.received[-1]["headers"])
        else:
            content = "".join(WORDS)
        choices = [self._choice(i, model, content) for i in range(n)]
        headers = {"x-request-id": "req_upstream_1"}
        if model == "set-cookie":
            headers["set-cookie"] = "session=for-this-client-only; Path=/"
        return JSONResponse({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
        }, headers=headers)

    @staticmethod
    def _choice(i: int, model: str, content: str) -> dict[str, Any]:
        if model == "tools":
            call = {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            return {"index": i, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": None, "tool_calls": [call]}}
        return {"index": i, "finish_reason": "stop",
                "message": {"role": "assistant", "content": content}}

    async def _chat_stream(self, body: dict[str, Any], model: str,
                           usage: bool) -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": 1700000000, "model": model}
        try:
            if model in ODD_STREAMS:
                for chunk in ODD_STREAMS[model]:
                    yield _sse({**base, **chunk})
                    await asyncio.sleep(self.chunk_delay)
            elif model == "tools":
                for delta in _tool_deltas():
                    yield _sse({**base, "choices": [{"index": 0, "delta": delta,
                                                     "finish_reason": None}]})
                    await asyncio.sleep(self.chunk_delay)
                yield _sse({**base, "choices": [{"index": 0, "delta": {},
                                                 "finish_reason": "tool_calls"}]})
            else:
                for i, word in enumerate(WORDS):
                    if model == "drop" and i == 2:
                        raise ConnectionResetError("fake drop")
                    delta = {"role": "assistant", "content": word} if i == 0 else \
                        {"content": word}
                    yield _sse({**base, "choices": [{"index": 0, "delta": delta,
                                                     "finish_reason": None}]})
                    await asyncio.sleep(self.chunk_delay)
                yield _sse({**base, "choices": [{"index": 0, "delta": {},
                                                 "finish_reason": "stop"}]})
            if usage:
                yield _sse({**base, "choices": [], "usage": {
                    "prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}})
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def completions(self, request: Request) -> Response:
        body = await self._record(request)
        return JSONResponse({"id": "cmpl-fake", "object": "text_completion",
                             "model": body.get("model"), "created": 1700000000,
                             "choices": [{"index": 0, "text": " world", "finish_reason": "stop",
                                          "logprobs": None}],
                             "usage": {"prompt_tokens": 2, "completion_tokens": 1,
                                       "total_tokens": 3}})

    async def responses(self, request: Request) -> Response:
        body = await self._record(request)
        resp = {"id": "resp_fake", "object": "response", "created_at": 1700000000,
                "status": "completed", "model": body.get("model"), "output": [
                    {"type": "message", "id": "msg_1", "role": "assistant",
                     "status": "completed",
                     "content": [{"type": "output_text", "text": "Responses answer.",
                                  "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}
        if not body.get("stream"):
            return JSONResponse(resp)

        async def events() -> AsyncIterator[bytes]:
            yield _sse({"type": "response.created",
                        "response": {**resp, "status": "in_progress", "output": []}},
                       event="response.created")
            await asyncio.sleep(self.chunk_delay)
            yield _sse({"type": "response.output_text.delta", "delta": "Responses answer.",
                        "item_id": "msg_1", "output_index": 0, "content_index": 0},
                       event="response.output_text.delta")
            await asyncio.sleep(self.chunk_delay)
            yield _sse({"type": "response.completed", "response": resp},
                       event="response.completed")

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) else 1
        return JSONResponse({"object": "list", "model": body.get("model"), "data": [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
            for i in range(n)], "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    async def models(self, request: Request) -> Response:
        self.received.append({"path": request.url.path, "headers": dict(request.headers),
                              "body": {}, "raw": b""})
        return JSONResponse({"object": "list", "data": [
            {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})

    async def files(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"id": request.path_params["fid"], "object": "file",
                             "method": request.method, "query": str(request.url.query)})

    async def speech(self, request: Request) -> Response:
        """Audio streamed in AUDIO_CHUNKS pieces, ``chunk_delay`` apart."""
        await self._record(request)

        async def audio() -> AsyncIterator[bytes]:
            for i in range(AUDIO_CHUNKS):
                yield bytes([i]) * 4096
                await asyncio.sleep(self.chunk_delay)

        return StreamingResponse(audio(), media_type="audio/mpeg")

    async def gzip_events(self, request: Request) -> Response:
        """An upstream that compresses a stream although nobody asked it to."""
        await self._record(request)
        events = _sse({"choices": [{"index": 0, "delta": {"content": "zipped"}}]})
        return Response(gzip.compress(events + b"data: [DONE]\n\n"),
                        media_type="text/event-stream", headers={"content-encoding": "gzip"})

    async def raw(self, request: Request) -> Response:
        """What reached the upstream, exactly: path, query and headers as bytes."""
        self.received.append({"path": request.url.path, "headers": dict(request.headers),
                              "body": {}, "raw": await request.body()})
        return JSONResponse({
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")]
                        for k, v in request.scope["headers"]]})

    async def messages(self, request: Request) -> Response:
        body = await self._record(request)
        early = await self._behaviour(body)
        if early is not None:
            return early
        msg = {"id": "msg_fake", "type": "message", "role": "assistant",
               "model": body.get("model"), "stop_reason": "end_turn",
               "content": [{"type": "text", "text": "Claude-ish answer."}],
               "usage": {"input_tokens": 9, "output_tokens": 3}}
        if not body.get("stream"):
            return JSONResponse(msg)

        async def events() -> AsyncIterator[bytes]:
            start = {**msg, "content": [], "stop_reason": None,
                     "usage": {"input_tokens": 9, "output_tokens": 0}}
            yield _sse({"type": "message_start", "message": start}, event="message_start")
            yield _sse({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}},
                       event="content_block_start")
            for part in ("Claude-ish", " answer."):
                await asyncio.sleep(self.chunk_delay)
                if body.get("model") == "drop" and part != "Claude-ish":
                    raise ConnectionResetError("fake drop")
                yield _sse({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": part}},
                           event="content_block_delta")
            yield _sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            yield _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": 3}}, event="message_delta")
            yield _sse({"type": "message_stop"}, event="message_stop")

        return StreamingResponse(events(), media_type="text/event-stream")


def _choice_delta(delta: Any, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# Streams whose event shapes are legal JSON but not what OpenAI sends: LiteLLM-style
# servers announce "tool_calls": null before the list; others send worse.
ODD_STREAMS: dict[str, list[dict[str, Any]]] = {
    "null-tools": [
        _choice_delta({"role": "assistant", "content": None, "tool_calls": None,
                       "function_call": None}),
        *(_choice_delta({k: v for k, v in d.items() if k != "role"}) for d in
          [{"role": "", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                        "function": {"name": "get_weather",
                                                     "arguments": ""}}]},
           {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
           {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}]),
        _choice_delta({}, "tool_calls"),
    ],
    "odd-stream": [
        _choice_delta("not an object"),
        _choice_delta({"function_call": {"name": None}}),
        _choice_delta({"function_call": {"name": "f", "arguments": 7}}),
        {"choices": [{"index": "x", "delta": {}}]},
        {"choices": "nope"},
        _choice_delta({"tool_calls": [{"index": 10**9}, "junk", {"index": -1}]}),
        _choice_delta({"content": "still here"}, "stop"),
    ],
}


def _tool_deltas() -> list[dict[str, Any]]:
    return [
        {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]


def _sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(obj) + "\n\n").encode()


def monotonic_ms() -> float:
    return time.monotonic() * 1000
