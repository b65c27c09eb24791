"""The HTTP client to the big model. Takes an httpx transport so tests can swap it.

httpx errors are mapped to our exception tree here, at the boundary: a timeout is 504,
anything that stops us from reaching the upstream is 502.
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from proxy.errors import NotConfigured, UpstreamError, UpstreamTimeout
from proxy.transport import Http1Transport

log = logging.getLogger("tactician.upstream")

# Hop-by-hop and framing headers must not be copied between the two connections;
# content-length is recomputed because the body may have gained a hint.
# ``expect`` too: the proxy has the whole body before it forwards, so a 100-continue
# handshake with the upstream would only cost a round trip.
_DROP_REQUEST = frozenset(
    {
        b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
        b"te", b"upgrade", b"proxy-authorization", b"proxy-connection", b"x-episode-id",
        b"accept-encoding", b"expect",
    }
)
# Every header a client may carry its own key in (OpenAI, Anthropic, Azure).
_CREDENTIALS = frozenset({b"authorization", b"x-api-key", b"api-key"})
# ``date``: the server adds its own, and two would be one malformed header.
_DROP_RESPONSE = frozenset(
    {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding",
     "date"}
)


@dataclass(frozen=True)
class Target:
    """Where one kind of request goes and which credential replaces the client's."""

    base_url: str
    api_key: str | None
    auth_header: str  # "authorization" (Bearer) or "x-api-key" (Anthropic)


def request_headers(incoming: list[tuple[bytes, bytes]],
                    target: Target) -> list[tuple[bytes, bytes]]:
    """The client's headers for the upstream, as raw bytes (values need not be ASCII)
    and in order (a repeated header keeps every value), with the proxy's credential in
    place of the client's when one is configured."""
    replace = _CREDENTIALS if target.api_key else frozenset()
    headers = [(k.lower(), v) for k, v in incoming
               if k.lower() not in _DROP_REQUEST and k.lower() not in replace]
    if target.api_key:
        if target.auth_header == "x-api-key":
            headers.append((b"x-api-key", target.api_key.encode()))
        else:
            headers.append((b"authorization", f"Bearer {target.api_key}".encode()))
    return headers


def response_headers(resp: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [
        (k.lower(), v)
        for k, v in resp.headers.raw
        if k.decode("latin-1").lower() not in _DROP_RESPONSE
    ]


def default_transport() -> httpx.AsyncBaseTransport | None:
    """Our lean transport (~0.25 ms less CPU per call than httpx's, proxy/transport.py),
    unless the environment names an HTTP(S) proxy: then None, so that httpx's own
    transports take the calls, as they honour HTTPS_PROXY / NO_PROXY and speak CONNECT
    (httpx ignores the environment's proxies whenever it is given a transport)."""
    proxies = urllib.request.getproxies()
    if any(scheme in proxies for scheme in ("http", "https", "all")):
        log.info("an HTTP(S) proxy is set in the environment: using httpx's own transport")
        return None
    return Http1Transport(max_connections=1000, max_idle=200)


class Upstream:
    def __init__(
        self,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=transport or default_transport(),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            # A shared client would keep one caller's upstream cookies and send them
            # with everyone's calls: store none (clients' own Cookie headers still pass).
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            # We relay compressed bytes as-is only if we asked for none: keep it plain.
            headers={"accept-encoding": "identity"},
            follow_redirects=False,
        )

    async def send(
        self,
        target: Target | None,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        content: bytes | None,
    ) -> httpx.Response:
        """Open a streamed response; the caller reads and closes it."""
        if target is None:
            raise NotConfigured(f"no upstream is configured for {path}")
        url = target.base_url.rstrip("/") + path
        if query:
            url += "?" + query.decode("latin-1")
        request = self._client.build_request(method, url, headers=headers, content=content)
        try:
            return await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def map_stream_error(exc: BaseException) -> UpstreamError | None:
    """Classify an error raised while reading an upstream body."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"upstream timed out mid-response: {type(exc).__name__}")
    if isinstance(exc, httpx.HTTPError):
        return UpstreamError(f"upstream connection failed mid-response: {type(exc).__name__}")
    return None
