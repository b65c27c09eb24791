"""Routes that the proxy answers itself: health, outcomes, snapshot, stats, metrics.

Routes parse and answer; the decisions live in services and the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from proxy.errors import BodyTooLarge, ClientClosed, Forbidden, TacticianError, Unauthorized
from proxy.hints.stats import arm_stats
from proxy.outcomes import SIGNATURE_HEADER, authorize, parse_outcome, same_secret

if TYPE_CHECKING:
    from proxy.services import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def error_response(err: TacticianError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def require_admin(request: Request) -> None:
    token = services(request).config.admin.token
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not same_secret(given.strip(), token):
        raise Unauthorized("missing or invalid admin token")


async def limited_body(request: Request) -> bytes:
    limit = services(request).body_limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body exceeds the {limit} byte limit")
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(f"request body exceeds the {limit} byte limit")
    except ClientDisconnect:
        raise ClientClosed("client disconnected before the body was complete") from None
    return body


# Older snapshots are leftovers: the learner reads its copy within minutes.
SNAPSHOT_KEEP_S = 24 * 3600
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def method_not_allowed(*allowed: str) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for the proxy's own paths under other methods: without it they
    would fall through to the ``/v1/*`` relay and reach the upstream."""
    async def endpoint(request: Request) -> Response:
        raise HTTPException(405, headers={"allow": ", ".join(allowed)})
    return endpoint


async def not_ours(request: Request) -> Response:
    """``/v1/tactician/*`` is the proxy's namespace: never relayed."""
    raise HTTPException(404)


async def healthz(request: Request) -> Response:
    svc = services(request)
    body: dict[str, Any] = {
        "status": "ok",
        "recorder": {**asdict(svc.recorder.stats), "queue_depth": svc.recorder.depth},
        "guidance": svc.advisor.stats() if svc.advisor else {"enabled": False},
        "learner": svc.learner.status(),
        "traffic": svc.traffic.status(),
    }
    if svc.local_model is not None:
        body["local_model"] = local = svc.local_model.status()
        if not local["running"]:
            body["status"] = "degraded"  # still 200: the proxy itself serves; it restarts
    return JSONResponse(body)


async def post_outcome(request: Request) -> Response:
    svc = services(request)
    body = await limited_body(request)
    authorize(svc.config.outcomes, request.headers.get("authorization"),
              request.headers.get(SIGNATURE_HEADER), body)
    row = parse_outcome(body)
    svc.accept_outcome(row)
    return JSONResponse(
        {"id": row["outcome_id"], "object": "outcome", "status": "accepted",
         "request_id": row["request_id"], "episode_id": row["episode_id"]},
        status_code=202,
    )


async def post_snapshot(request: Request) -> Response:
    """A consistent read-only copy of the store for the learner (another process)."""
    require_admin(request)
    if request.headers.get("origin") is not None:
        # Browsers send Origin on every cross-site POST; the learner never does. Without
        # this, any web page could make the proxy copy its whole store to disk.
        raise Forbidden("snapshots are for the learner, not for web pages")
    svc = services(request)
    folder = svc.config.state_dir / "snapshots"
    dest = folder / f"store-{time.time_ns()}.duckdb"
    await asyncio.to_thread(_prune_snapshots, folder, time.time() - SNAPSHOT_KEEP_S)
    future = svc.recorder.submit(lambda store: store.snapshot(dest))
    path = await asyncio.wrap_future(future)
    return JSONResponse({"path": str(path)})


def _prune_snapshots(folder: Path, before: float) -> None:
    """A learner deletes its snapshot when done; one that crashed leaves it behind."""
    for old in folder.glob("store-*.duckdb*"):
        try:
            if old.stat().st_mtime < before:
                old.unlink()
        except FileNotFoundError:
            continue


async def get_stats(request: Request) -> Response:
    """Success per arm and per adapter version, live uplift with its 95% CI."""
    svc = services(request)
    engine = svc.advisor.stats() if svc.advisor else {"enabled": False}
    report = await asyncio.to_thread(arm_stats, svc.store)
    return JSONResponse({"object": "tactician.stats", "guidance": engine, **report})


async def get_metrics(request: Request) -> Response:
    """Prometheus exposition; open like /healthz (counts and timings, no content)."""
    body = await asyncio.to_thread(services(request).metrics.render)
    return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})
