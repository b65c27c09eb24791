"""Serve the simulated model as an OpenAI-compatible endpoint on loopback.

Only ``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models`` exist. The
log of what the model saw is read through ``SimServer.records()`` in process, never over
HTTP, so a proxy in front of the server cannot read the outcomes it is meant to learn.
``usage`` counts whitespace-separated words (see ``model.count_words``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.sim.model import Reply, SimModel, SimRequestError, TaskRecord
from bench.sim.world import Task, World

WORDS_PER_CHUNK = 4
START_TIMEOUT_S = 10.0


def error_response(message: str, code: str, param: str | None = None) -> JSONResponse:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return JSONResponse(body, status_code=400)


def usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def completion(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",  # random: an index here would leak to the proxy
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(reply),
    }


def text_pieces(text: str) -> list[str]:
    """Split into small pieces that concatenate back to exactly ``text``."""
    words = text.split(" ")
    groups = [
        " ".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)
    ]
    return [g + (" " if i < len(groups) - 1 else "") for i, g in enumerate(groups)]


def stream_events(reply: Reply, model: str, include_usage: bool) -> list[dict[str, Any]]:
    base: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    if include_usage:
        base["usage"] = None  # as OpenAI does: null on every chunk but the last

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "choices": [choice]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in text_pieces(reply.text)]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append({**base, "choices": [], "usage": usage(reply)})
    return events


async def sse(events: list[dict[str, Any]]) -> AsyncIterator[str]:
    for event in events:
        yield f"data: {json.dumps(event)}\n\n"
    yield "data: [DONE]\n\n"


def create_app(model: SimModel) -> Starlette:
    model_id = f"sim-{model.world.name}"

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error_response("the request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return error_response("the request body must be a JSON object", "invalid_json")
        try:
            reply = model.answer(body.get("messages"))
        except SimRequestError as exc:
            return error_response(exc.message, exc.code, exc.param)
        requested = body.get("model")
        name = requested if isinstance(requested, str) else model_id
        if not body.get("stream"):
            return JSONResponse(completion(reply, name))
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = stream_events(reply, name, include_usage)
        return StreamingResponse(sse(events), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        entry = {"id": model_id, "object": "model", "created": 0, "owned_by": "tactician-sim"}
        return JSONResponse({"object": "list", "data": [entry]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


class SimServer:
    """The simulated model on 127.0.0.1 at a free port, served from a background thread.

    Use as a context manager. The harness calls ``register(i)`` before sending task i
    (see ``bench.sim.model``), ``outcome(i)`` to learn what to post to the proxy, and
    ``records()`` for the metrics; ``reset()`` (or a new server) between arms.
    """

    def __init__(self, world: World, host: str = "127.0.0.1") -> None:
        self.world = world
        self.model = SimModel(world)
        self._host = host
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.model.tasks

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the server is not started")
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """What to give the proxy as its upstream (or the openai client as base_url)."""
        return f"http://{self._host}:{self.port}/v1"

    def register(self, index: int) -> Task:
        return self.model.register(index)

    def records(self) -> list[TaskRecord]:
        return self.model.records()

    def outcome(self, index: int) -> bool:
        """The episode's success, as the harness should post it; False if never seen."""
        record = self.model.record(index)
        return record is not None and record.succeeded

    def reset(self) -> None:
        self.model.reset()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the simulated model server is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, 0))
        config = uvicorn.Config(
            create_app(self.model), log_level="warning", access_log=False, lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._sock, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the simulated model server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()
        self._sock, self._server, self._thread = None, None, None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
