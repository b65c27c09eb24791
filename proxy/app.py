"""The app factory: ``create_app(config)`` wires the services and the routes.

Start here to find any behaviour: forwarded APIs are ``Relay`` instances
(proxy/relay.py), the proxy's own endpoints are in proxy/routes.py, and everything
the routes use is built in ``build_services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy import litellm_backend, routes
from proxy.config import Config
from proxy.dashboard import queries
from proxy.dashboard.routes import dashboard_routes
from proxy.errors import BadRequest, NotFound, TacticianError
from proxy.learning import LearnerJobs
from proxy.litellm_backend import LiteLLMBackend
from proxy.local_model import LocalModelServer
from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.redact import build_redactor
from proxy.relay import Relay
from proxy.services import Advisor, Services
from proxy.store import Store, StoreLocked
from proxy.upstream import Target, Upstream

log = logging.getLogger("tactician")
# How long startup waits for a store another process holds (see open_store).
STORE_WAIT_S = 120.0

AdvisorFactory = Callable[[Config, Store, Recorder], Advisor | None]


def build_targets(config: Config, local_base_url: str | None) -> dict[str, Target]:
    up = config.upstream
    targets = {}
    base = up.base_url or local_base_url
    if base:
        targets["openai"] = Target(base, up.api_key, "authorization")
    if up.anthropic_base_url:
        targets["anthropic"] = Target(up.anthropic_base_url, up.anthropic_api_key, "x-api-key")
    return targets


def default_advisor(config: Config, store: Store, recorder: Recorder) -> Advisor | None:
    if not config.guidance.enabled:
        return None
    from proxy.hints.engine import HintEngine  # noqa: PLC0415 - llama.cpp stays lazy

    return HintEngine(config, store, recorder)


def create_app(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    advisor_factory: AdvisorFactory = default_advisor,
) -> Starlette:
    """Build the proxy. ``transport`` replaces the network for the upstream client
    (tests); ``advisor_factory`` builds the hint engine (None disables hints)."""
    holder: dict[str, Services] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        local = None
        if not config.upstream.base_url and transport is None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            local = LocalModelServer(config.local_model, _local_path(config),
                                     log_path=config.state_dir / "local_model.log")
            await asyncio.to_thread(local.start)
        svc = build_services(config, transport, advisor_factory, local)
        holder["svc"] = svc
        app.state.services = svc
        svc.recorder.start()
        if svc.litellm is not None:
            await asyncio.to_thread(litellm_backend.prepare)
        svc.learner.start()
        if svc.advisor is not None:
            await svc.advisor.start()
        try:
            yield
        finally:
            svc.learner.stop()
            if svc.advisor is not None:
                await svc.advisor.close()
            await svc.upstream.aclose()
            svc.recorder.stop()
            svc.store.close()
            if local is not None:
                local.stop()

    def relay(target: str, *, json_body: bool, guided: bool = False) -> _LazyRelay:
        return _LazyRelay(holder, target=target, json_body=json_body, guided=guided)

    route_list = [
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/v1/outcomes", routes.post_outcome, methods=["POST"]),
        Route("/v1/tactician/stats", routes.get_stats, methods=["GET"]),
        Route("/v1/tactician/snapshot", routes.post_snapshot, methods=["POST"]),
        Route("/metrics", routes.get_metrics, methods=["GET"]),
        Route("/v1/outcomes", routes.method_not_allowed("POST"), methods=routes.ANY_METHOD),
        Route("/v1/tactician/stats", routes.method_not_allowed("GET"),
              methods=routes.ANY_METHOD),
        Route("/v1/tactician/snapshot", routes.method_not_allowed("POST"),
              methods=routes.ANY_METHOD),
        Route("/v1/tactician/{rest:path}", routes.not_ours, methods=routes.ANY_METHOD),
        *dashboard_routes(),
        Route("/v1/chat/completions", relay("openai", json_body=True, guided=True),
              methods=["POST"]),
        Route("/v1/responses", relay("openai", json_body=True, guided=True), methods=["POST"]),
        Route("/v1/completions", relay("openai", json_body=True), methods=["POST"]),
        Route("/v1/embeddings", relay("openai", json_body=True), methods=["POST"]),
        Route("/v1/messages", relay("anthropic", json_body=True, guided=True),
              methods=["POST"]),
        Route("/v1/messages/{rest:path}", relay("anthropic", json_body=False)),
        Route("/v1/{rest:path}", relay("openai", json_body=False),
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = Starlette(
        routes=route_list,
        lifespan=lifespan,
        exception_handlers={
            TacticianError: _tactician_error,
            HTTPException: _http_error,
        },
    )
    return app


class _LazyRelay:
    """Routes exist before the lifespan builds the services: bind on first use.
    (A class, not a function, so Starlette treats it as a raw ASGI app.)"""

    def __init__(self, holder: dict[str, Services], **kwargs: Any) -> None:
        self.holder = holder
        self.kwargs = kwargs
        self.relay: Relay | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.relay is None:
            self.relay = Relay(self.holder["svc"], **self.kwargs)
        await self.relay(scope, receive, send)


def open_store(path: Path, wait_s: float = STORE_WAIT_S) -> Store:
    """Open the store read-write, waiting while another process holds it: a learner
    run by hand while no proxy ran reads the file directly for up to a minute or so."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Store(path)
        except StoreLocked as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s; waiting up to %.0f s for it", exc, deadline - time.monotonic())
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def build_services(
    config: Config,
    transport: httpx.AsyncBaseTransport | None,
    advisor_factory: AdvisorFactory,
    local: LocalModelServer | None,
) -> Services:
    store = open_store(config.store_path)
    recorder = Recorder(
        store,
        queue_size=config.store.queue_size,
        batch_size=config.store.batch_size,
        flush_interval_s=config.store.flush_interval_ms / 1000,
        spill_path=config.state_dir / "spill.jsonl",
    )
    upstream = Upstream(
        timeout_s=config.upstream.timeout_s,
        connect_timeout_s=config.upstream.connect_timeout_s,
        transport=transport,
    )
    metrics = Metrics()
    svc = Services(
        config=config,
        store=store,
        recorder=recorder,
        upstream=upstream,
        redact=build_redactor(config.store.redact),
        targets=build_targets(config, local.base_url if local else None),
        advisor=advisor_factory(config, store, recorder),
        litellm=LiteLLMBackend(config.routes, httpx.Timeout(
            config.upstream.timeout_s, connect=config.upstream.connect_timeout_s))
        if config.routes else None,
        learner=LearnerJobs(config, recorder),
        metrics=metrics,
        local_model=local,
    )
    # The live uplift on /metrics is the dashboard's one-pass version of arm_stats.
    metrics.track(recorder, svc.adapter_version, lambda: queries.overall(store))
    return svc


def _local_path(config: Config) -> Any:
    return config.resolve(config.local_model.model_path) if config.local_model.model_path \
        else None


async def _tactician_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TacticianError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: TacticianError = NotFound(f"no route for {request.method} {request.url.path}")
    else:
        err = BadRequest(f"{request.method} {request.url.path}: {exc.detail}",
                         code="method_not_allowed" if exc.status_code == 405 else None)
        err.status = exc.status_code
    return JSONResponse(err.body(), status_code=err.status, headers=exc.headers)
