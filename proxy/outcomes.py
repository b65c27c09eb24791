"""The outcome webhook: success/score for a call or an episode.

Outcomes are stored as they come, keyed by request_id or episode_id; linking happens
when reading (view ``call_outcomes``), so an outcome may arrive before its call is on
disk, and a later outcome for the same target supersedes the earlier one while the
history stays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from datetime import UTC, datetime
from typing import Any

from proxy.config import OutcomesConfig
from proxy.errors import InvalidJSON, Unauthorized, Unprocessable
from proxy.ids import uuid7, valid_id
from proxy.payloads import parse_json

SIGNATURE_HEADER = "x-tactician-signature"
MAX_NOTE = 2000
MAX_METADATA_BYTES = 16_384
_ALLOWED = {"request_id", "episode_id", "success", "score", "note", "metadata"}


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a secret from a header; compared as UTF-8 bytes
    because ``hmac.compare_digest`` raises on non-ASCII text (a 500, not a 401)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def authorize(cfg: OutcomesConfig, authorization: str | None, signature: str | None,
              body: bytes) -> None:
    if cfg.token:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not same_secret(token.strip(), cfg.token):
            raise Unauthorized("missing or invalid outcome token")
    if cfg.hmac_secret:
        expected = hmac.new(cfg.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
        given = (signature or "").removeprefix("sha256=").strip().lower()  # hex: any case
        if not same_secret(given, expected):
            raise Unauthorized(f"missing or invalid {SIGNATURE_HEADER} (HMAC-SHA256 of the body)",
                               code="invalid_signature")


def parse_outcome(body: bytes) -> dict[str, Any]:
    """Validate a webhook body and return the row to store."""
    obj = parse_json(body, "outcome body")
    if not isinstance(obj, dict):
        raise InvalidJSON("outcome body must be a JSON object")
    unknown = sorted(set(obj) - _ALLOWED)
    if unknown:
        raise Unprocessable(f"unknown field: {unknown[0]}", param=unknown[0],
                            code="unknown_field")
    request_id = _opt_id(obj, "request_id")
    episode_id = _opt_id(obj, "episode_id")
    if request_id is None and episode_id is None:
        raise Unprocessable("one of request_id or episode_id is required",
                            param="request_id", code="missing_target")
    success, score = _opt_success(obj), _opt_score(obj)
    if success is None and score is None:
        raise Unprocessable("one of success or score is required", param="success",
                            code="missing_outcome")
    return {
        "outcome_id": uuid7(),
        "received_at": datetime.now(UTC),
        "request_id": request_id,
        "episode_id": episode_id,
        "success": success,
        "score": score,
        "note": _opt_note(obj),
        "metadata": _opt_metadata(obj),
    }


def _opt_id(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not valid_id(value):
        raise Unprocessable(f"{key} must be 1-200 characters of letters, digits, '.', '_', "
                            "':' or '-' (as x-episode-id)", param=key, code="invalid_field")
    return value


def _opt_success(obj: dict[str, Any]) -> bool | None:
    value = obj.get("success")
    if value is not None and not isinstance(value, bool):
        raise Unprocessable("success must be true or false", param="success",
                            code="invalid_field")
    return value


def _opt_score(obj: dict[str, Any]) -> float | None:
    value = obj.get("score")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not 0.0 <= value <= 1.0:
        raise Unprocessable("score must be a number in [0, 1]", param="score",
                            code="invalid_field")
    return float(value)


def _opt_note(obj: dict[str, Any]) -> str | None:
    value = obj.get("note")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise Unprocessable(f"note must be a string of at most {MAX_NOTE} characters",
                            param="note", code="invalid_field")
    return value


def _opt_metadata(obj: dict[str, Any]) -> str | None:
    value = obj.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Unprocessable("metadata must be an object", param="metadata",
                            code="invalid_field")
    text = json.dumps(value)  # ASCII-escaped: valid even with a lone surrogate inside
    if len(text) > MAX_METADATA_BYTES:
        raise Unprocessable(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON",
                            param="metadata", code="invalid_field")
    return text
