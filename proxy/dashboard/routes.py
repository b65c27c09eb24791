"""The dashboard page, its JSON API, and who may see them.

Access: with ``admin.token`` set, a request needs ``Authorization: Bearer <token>`` or
the session cookie. A browser gets the cookie by opening ``/dashboard?token=<token>``
once: the answer sets it (HttpOnly, SameSite=Strict, path /dashboard) and redirects to
``/dashboard``, so the token leaves the address bar and the history. The cookie holds
an HMAC of the token, not the token, and stops working when the token changes. Without
``admin.token`` the dashboard answers loopback clients that name it by a loopback
host only: it shows prompts and answers, which must not be open to a network (or to
a web page in the local browser) by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from proxy.dashboard import queries
from proxy.errors import BadRequest, Forbidden, NotFound, Unauthorized
from proxy.outcomes import same_secret

if TYPE_CHECKING:
    from proxy.services import Services

COOKIE = "tactician_dashboard"
PAGE = Path(__file__).with_name("page.html")
MAX_LIMIT = 200
# The page is self-contained: no request may leave the proxy's origin.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def dashboard_routes() -> list[Route]:
    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/api/summary", api_summary, methods=["GET"]),
        Route("/dashboard/api/live", api_live, methods=["GET"]),
        Route("/dashboard/api/strategies", api_strategies, methods=["GET"]),
        Route("/dashboard/api/learning", api_learning, methods=["GET"]),
        Route("/dashboard/api/calls", api_calls, methods=["GET"]),
        Route("/dashboard/api/calls/{request_id}", api_call, methods=["GET"]),
        Route("/dashboard/api/episodes/{episode_id}", api_episode, methods=["GET"]),
    ]


# -- access -----------------------------------------------------------------------------
def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"tactician-dashboard-session", hashlib.sha256).hexdigest()


def check_access(token: str | None, request: Request) -> None:
    """Raise unless the request may see the dashboard (see the module docstring)."""
    if not token:
        if not _loopback(request):
            raise Forbidden("the dashboard is open to loopback clients only; set "
                            "admin.token to open it to others")
        if not _loopback_name(request.headers.get("host")):
            raise Forbidden("without admin.token the dashboard answers to "
                            "http://localhost or a loopback address only")
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and same_secret(given.strip(), token):
        return
    if same_secret(request.cookies.get(COOKIE, ""), session_value(token)):
        return
    raise Unauthorized("missing or invalid admin token: open /dashboard?token=<admin.token>")


def _loopback(request: Request) -> bool:
    return _loopback_ip(request.client.host if request.client else "")


def _loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _loopback_name(host: str | None) -> bool:
    """Whether the Host header names this machine. A page on another site that
    rebinds its DNS name to 127.0.0.1 connects from loopback but still sends its own
    name: without this check it could read the dashboard's prompts and answers."""
    if host is None:  # HTTP/1.0 without Host: not a browser
        return True
    name = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
    name = name.lower()
    return name == "localhost" or name.endswith(".localhost") or _loopback_ip(name)


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    check_access(svc.config.admin.token, request)
    return svc


# -- parameters -------------------------------------------------------------------------
def _since(request: Request) -> datetime:
    raw = request.query_params.get("days", "")
    try:
        days = float(raw) if raw else None
    except ValueError:
        raise BadRequest("days must be a number", param="days") from None
    if days is not None and not 0 <= days < 100_000:
        raise BadRequest("days must be between 0 and 100000", param="days")
    return queries.since_of(days)


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit", "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return int(raw)


def _before(request: Request) -> datetime | None:
    raw = request.query_params.get("before")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest("before must be an ISO 8601 timestamp", param="before") from None


def _json(data: Any) -> Response:
    body = json.dumps(data, default=_encode, ensure_ascii=False)
    return Response(body, media_type="application/json", headers={"cache-control": "no-store"})


def _encode(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- handlers ---------------------------------------------------------------------------
async def page(request: Request) -> Response:
    svc: Services = request.app.state.services
    token = svc.config.admin.token
    given = request.query_params.get("token")
    if token and given is not None:
        if not same_secret(given, token):
            raise Unauthorized("invalid admin token")
        response = RedirectResponse(request.url.path, status_code=303)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                            path="/dashboard", secure=request.url.scheme == "https")
        return response
    check_access(token, request)
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def live(svc: Services) -> dict[str, Any]:
    """In-process state: nothing here touches the store."""
    return {
        "recorder": {**asdict(svc.recorder.stats), "queue_depth": svc.recorder.depth},
        "adapter_version": svc.adapter_version(),
        "outcomes_received": svc.counters.outcomes,
        "learner": svc.learner.status(),
    }


async def api_live(request: Request) -> Response:
    return _json(live(_services(request)))


async def api_summary(request: Request) -> Response:
    svc = _services(request)
    report = await asyncio.to_thread(queries.summary, svc.store, _since(request))
    return _json({**report, "live": live(svc)})


async def api_strategies(request: Request) -> Response:
    svc = _services(request)
    rows = await asyncio.to_thread(queries.strategies, svc.store, _since(request),
                                   _limit(request, 20))
    return _json({"strategies": rows})


async def api_learning(request: Request) -> Response:
    svc = _services(request)
    runs = await asyncio.to_thread(queries.learner_runs, svc.store, _limit(request, 100))
    return _json({"runs": runs, "adapter_version": svc.adapter_version()})


async def api_calls(request: Request) -> Response:
    svc = _services(request)
    rows = await asyncio.to_thread(queries.recent_calls, svc.store, _limit(request, 50),
                                   _before(request))
    return _json({"calls": rows})


async def api_call(request: Request) -> Response:
    svc = _services(request)
    request_id = request.path_params["request_id"]
    found = await asyncio.to_thread(queries.call_detail, svc.store, request_id)
    if found is None:
        raise NotFound(f"no call {request_id}")
    return _json(found)


async def api_episode(request: Request) -> Response:
    svc = _services(request)
    episode_id = request.path_params["episode_id"]
    found = await asyncio.to_thread(queries.episode_detail, svc.store, episode_id)
    if found is None:
        raise NotFound(f"no episode {episode_id}")
    return _json(found)
