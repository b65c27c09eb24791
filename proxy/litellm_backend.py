"""Chat completions for models routed to non-OpenAI providers, through litellm.

The agent keeps speaking OpenAI; litellm translates to the provider (Anthropic,
Bedrock, ...). There are no upstream bytes to relay here, so responses are litellm's
OpenAI-format objects serialized once. litellm is imported on first use only: it is
heavy and most deployments never route a model through it.
"""

from __future__ import annotations

import fnmatch
import json
import time
from typing import TYPE_CHECKING, Any

from proxy.calls import Call
from proxy.config import RouteConfig
from proxy.errors import TacticianError, UpstreamError

if TYPE_CHECKING:
    from proxy.relay import Send


class LiteLLMError(TacticianError):
    type = "upstream_error"
    code = "provider_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class LiteLLMBackend:
    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.routes = routes

    def match(self, model: str | None) -> RouteConfig | None:
        if not model:
            return None
        for route in self.routes:
            if fnmatch.fnmatchcase(model, route.model):
                return route
        return None

    async def handle(
        self, call: Call, body: dict[str, Any], send: Send,
        id_headers: list[tuple[bytes, bytes]],
    ) -> None:
        route = self.match(call.model)
        assert route is not None
        import litellm  # noqa: PLC0415 - heavy, only for routed models

        kwargs: dict[str, Any] = {**body, "model": route.litellm_model}
        if route.api_key:
            kwargs["api_key"] = route.api_key
        if route.api_base:
            kwargs["api_base"] = route.api_base
        call.upstream_start = time.perf_counter()
        try:
            result = await litellm.acompletion(**kwargs)
            if body.get("stream"):
                await self._stream(call, result, send, id_headers)
            else:
                await self._single(call, result, send, id_headers)
        except litellm.exceptions.APIError as exc:
            raise LiteLLMError(str(exc), int(getattr(exc, "status_code", 502))) from exc
        except (litellm.exceptions.OpenAIError, OSError) as exc:
            status = int(getattr(exc, "status_code", 502) or 502)
            if status < 400:
                raise UpstreamError(f"provider call failed: {exc}") from exc
            raise LiteLLMError(str(exc), status) from exc
        finally:
            call.upstream_end = time.perf_counter()

    async def _single(
        self, call: Call, result: Any, send: Send, id_headers: list[tuple[bytes, bytes]]
    ) -> None:
        obj = result.model_dump(exclude_none=True)
        obj["model"] = call.model or obj.get("model")
        raw = json.dumps(obj).encode()
        call.status, call.response_raw = 200, raw
        call.mark_first_byte()
        call.completed = True
        headers = [(b"content-type", b"application/json"), *id_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    async def _stream(
        self, call: Call, result: Any, send: Send, id_headers: list[tuple[bytes, bytes]]
    ) -> None:
        from proxy.sse import StreamAssembler  # noqa: PLC0415

        headers = [(b"content-type", b"text/event-stream"), *id_headers]
        call.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        assembler = StreamAssembler(call.endpoint)
        async for chunk in result:
            obj = chunk.model_dump(exclude_none=True)
            obj["model"] = call.model or obj.get("model")
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            assembler.feed(data)
            call.mark_first_byte()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        call.response_obj = assembler.result()
        call.completed = True
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})

