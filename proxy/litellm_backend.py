"""Chat completions for models routed to non-OpenAI providers, through litellm.

The agent keeps speaking OpenAI; litellm translates to the provider (Anthropic,
Bedrock, ...). There are no upstream bytes to relay here, so responses are litellm's
OpenAI-format objects serialized once. litellm is imported on first use only: it is
heavy and most deployments never route a model through it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import httpx

from proxy.calls import Call
from proxy.config import RouteConfig
from proxy.errors import BadRequest, TacticianError, UpstreamError, UpstreamTimeout
from proxy.sse import StreamAssembler

if TYPE_CHECKING:
    from proxy.relay import Send

log = logging.getLogger("tactician.litellm")


# The Chat Completions parameters a client may send on a routed model. litellm's
# ``acompletion`` also takes ``api_base``, ``base_url``, ``api_key``, ``extra_headers``,
# provider credentials and more: passed through from a body, they would let a client
# send the route's key to a host of its choosing.
CHAT_PARAMS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
    "modalities", "moderation", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options",
})


class LiteLLMError(TacticianError):
    type = "upstream_error"
    code = "provider_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def prepare() -> None:
    """Import litellm (seconds of CPU) before the first routed call, off the event
    loop, with its model-price map read from the package rather than fetched from
    GitHub at import time."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # noqa: PLC0415 - heavy, only for routed models

    # Its own banner on every error ("Provider List: ..."): ours is the log line.
    litellm.suppress_debug_info = True


class LiteLLMBackend:
    def __init__(self, routes: tuple[RouteConfig, ...], timeout: httpx.Timeout) -> None:
        self.routes = routes
        self.timeout = timeout

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
        unknown = sorted(set(body) - CHAT_PARAMS)
        if unknown:
            raise BadRequest(f"{unknown[0]} is not a Chat Completions parameter this proxy "
                             "passes to routed models", param=unknown[0],
                             code="unsupported_parameter")
        import litellm  # noqa: PLC0415 - imported by prepare() at startup: a dict lookup

        kwargs: dict[str, Any] = {**body, "model": route.litellm_model, "timeout": self.timeout}
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
        except TacticianError:
            raise
        except Exception as exc:
            raise provider_error(exc) from exc
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
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(raw)).encode()), *id_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    async def _stream(
        self, call: Call, result: Any, send: Send, id_headers: list[tuple[bytes, bytes]]
    ) -> None:
        headers = [(b"content-type", b"text/event-stream"), *id_headers]
        call.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        assembler = StreamAssembler(call.endpoint)
        try:
            async for chunk in result:
                obj = chunk.model_dump(exclude_none=True)
                obj["model"] = call.model or obj.get("model")
                data = b"data: " + json.dumps(obj).encode() + b"\n\n"
                assembler.feed(data)
                call.mark_first_byte()
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception:
            call.partial = True  # headers are gone: the relay cuts the connection
            raise
        finally:
            call.response_obj = assembler.result()
        call.completed = True
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})


def provider_error(exc: Exception) -> TacticianError:
    """litellm's errors are the ``openai`` package's: a status from the provider passes
    on; a timeout is 504 and anything that kept us from the provider 502, as on the
    relay path."""
    import openai  # noqa: PLC0415 - litellm has imported it already

    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"provider timed out: {exc}")
    status = getattr(exc, "status_code", None)
    # litellm reports a provider it never reached as a 500 with a made-up response;
    # a provider that answered left its headers.
    headers = getattr(exc, "litellm_response_headers", None)
    answered = headers is not None or not (isinstance(status, int) and status >= 500)
    if answered and (isinstance(exc, openai.APIStatusError)
                     or (isinstance(status, int) and status >= 400)):
        err = LiteLLMError(f"provider error: {exc}", int(status or 502))
        retry = headers.get("retry-after") if headers is not None else None
        err.headers = [(b"retry-after", str(retry).encode())] if retry else []
        return err
    log.warning("routed call failed: %s: %s", type(exc).__name__, exc)
    return UpstreamError(f"provider call failed: {type(exc).__name__}: {exc}")
