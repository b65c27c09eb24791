"""Tactician's exception tree and the one OpenAI-shaped error body.

Everything the proxy itself rejects or fails on is a ``TacticianError``; the app maps
it to ``{"error": {"message", "type", "param", "code"}}`` at the boundary, so clients
written for OpenAI handle our errors like OpenAI's.
"""

from __future__ import annotations

import json
from typing import Any


class TacticianError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: list[tuple[bytes, bytes]] = []  # extra response headers (retry-after)
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class ConfigError(TacticianError):
    code = "invalid_config"


class UnknownConfigKey(ConfigError):
    """A key the config does not have; ``param`` is its dotted name."""


class BadRequest(TacticianError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class Unprocessable(BadRequest):
    status = 422


class Unauthorized(TacticianError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(TacticianError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(TacticianError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ClientClosed(TacticianError):
    """The client left before its request was read; the answer goes nowhere."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed"


class BodyTooLarge(TacticianError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(TacticianError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class NotConfigured(TacticianError):
    status = 501
    type = "invalid_request_error"
    code = "not_configured"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_bytes(err: TacticianError) -> bytes:
    return json.dumps(err.body()).encode()
