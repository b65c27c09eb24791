"""The outcome webhook: auth, validation, linking by call and by episode, early and late."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ProxyHandle

MSGS = [{"role": "user", "content": "Do the task"}]


def call(proxy: ProxyHandle, episode: str | None = None) -> str:
    headers = {"x-episode-id": episode} if episode else {}
    r = httpx.post(f"{proxy.base_url}/chat/completions",
                   json={"model": "m", "messages": MSGS}, headers=headers)
    assert r.status_code == 200
    return r.headers["x-request-id"]


def effective(proxy: ProxyHandle, rid: str, expect: object = "any") -> dict[str, object]:
    sql = "SELECT * FROM call_outcomes WHERE request_id = ? AND outcome_id IS NOT NULL"
    if expect != "any":
        sql += f" AND success = {str(expect).upper()}"
    rows = proxy.wait_rows(sql, 1, [rid])
    assert rows, f"no effective outcome for {rid}"
    return rows[0]


def test_outcome_by_call_late(proxy: ProxyHandle) -> None:
    rid = call(proxy)
    r = httpx.post(f"{proxy.base_url}/outcomes",
                   json={"request_id": rid, "success": True, "note": "ok",
                         "metadata": {"grader": "unit"}})
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    eff = effective(proxy, rid)
    assert eff["success"] is True and eff["outcome_level"] == "call"
    stored = proxy.rows("SELECT * FROM outcomes WHERE request_id = ?", [rid])[0]
    assert json.loads(stored["metadata"]) == {"grader": "unit"} and stored["note"] == "ok"


def test_outcome_before_the_call_is_flushed_still_links(proxy: ProxyHandle) -> None:
    # Send the outcome immediately, before the recorder can have flushed the call.
    rid = call(proxy)
    assert httpx.post(f"{proxy.base_url}/outcomes",
                      json={"request_id": rid, "score": 0.75}).status_code == 202
    eff = effective(proxy, rid)
    assert eff["score"] == 0.75


def test_outcome_for_a_future_episode_links_when_calls_arrive(proxy: ProxyHandle) -> None:
    assert httpx.post(f"{proxy.base_url}/outcomes",
                      json={"episode_id": "ep-early", "success": False}).status_code == 202
    rid1, rid2 = call(proxy, "ep-early"), call(proxy, "ep-early")
    for rid in (rid1, rid2):
        eff = effective(proxy, rid)
        assert eff["success"] is False and eff["outcome_level"] == "episode"


def test_later_outcome_supersedes_and_history_is_kept(proxy: ProxyHandle) -> None:
    rid = call(proxy, "ep-sup")
    for success in (False, True):
        assert httpx.post(f"{proxy.base_url}/outcomes",
                          json={"episode_id": "ep-sup", "success": success}).status_code == 202
    assert effective(proxy, rid, expect=True)["success"] is True
    history = proxy.rows("SELECT success FROM outcomes WHERE episode_id = 'ep-sup' "
                         "ORDER BY received_at")
    assert [h["success"] for h in history] == [False, True]
    # A per-call outcome beats the episode's.
    httpx.post(f"{proxy.base_url}/outcomes", json={"request_id": rid, "success": False})
    assert effective(proxy, rid, expect=False)["outcome_level"] == "call"


def test_a_later_call_score_replaces_the_episode_outcome_whole(proxy: ProxyHandle) -> None:
    # A score-only outcome for the call must not keep the episode's earlier success:
    # the call's own latest outcome is taken whole, in the store's view and the dashboard.
    rid = call(proxy, "ep-mix")
    httpx.post(f"{proxy.base_url}/outcomes", json={"episode_id": "ep-mix", "success": True})
    assert effective(proxy, rid, expect=True)["outcome_level"] == "episode"
    httpx.post(f"{proxy.base_url}/outcomes", json={"request_id": rid, "score": 0.1})
    rows = proxy.wait_rows("SELECT * FROM call_outcomes WHERE request_id = ? "
                           "AND outcome_level = 'call'", 1, [rid])
    assert (rows[0]["success"], rows[0]["score"]) == (None, 0.1)
    detail = httpx.get(f"{proxy.url}/dashboard/api/calls/{rid}").json()["call"]
    assert (detail["success"], detail["score"], detail["outcome_level"]) == (None, 0.1, "call")


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{broken", 400, "invalid_json"),
    (b"[]", 400, "invalid_json"),
    (json.dumps({"success": True}).encode(), 422, "missing_target"),
    (json.dumps({"request_id": "x"}).encode(), 422, "missing_outcome"),
    (json.dumps({"request_id": "x", "success": "yes"}).encode(), 422, "invalid_field"),
    (json.dumps({"request_id": "x", "score": 1.5}).encode(), 422, "invalid_field"),
    (json.dumps({"request_id": "x", "success": True, "extra": 1}).encode(), 422,
     "unknown_field"),
    (json.dumps({"request_id": "x", "success": True, "metadata": [1]}).encode(), 422,
     "invalid_field"),
    (json.dumps({"request_id": "x", "success": True, "note": "n" * 3000}).encode(), 422,
     "invalid_field"),
])
def test_malformed_outcomes(proxy: ProxyHandle, body: bytes, status: int, code: str) -> None:
    r = httpx.post(f"{proxy.base_url}/outcomes", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and set(err) == {"message", "type", "param", "code"}
    assert proxy.rows("SELECT count(*) AS n FROM outcomes WHERE request_id = 'x'")[0]["n"] == 0


def test_bearer_token_required_when_configured(make_proxy: Callable[..., ProxyHandle],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TACTICIAN_OUTCOME_TOKEN", "tok-123")
    proxy = make_proxy(outcomes={"token": "${TACTICIAN_OUTCOME_TOKEN}"})
    body = {"episode_id": "e1", "success": True}
    assert httpx.post(f"{proxy.base_url}/outcomes", json=body).status_code == 401
    bad = httpx.post(f"{proxy.base_url}/outcomes", json=body,
                     headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    ok = httpx.post(f"{proxy.base_url}/outcomes", json=body,
                    headers={"authorization": "Bearer tok-123"})
    assert ok.status_code == 202
    assert len(proxy.wait_rows("SELECT * FROM outcomes", 1)) == 1


def test_hmac_signature(make_proxy: Callable[..., ProxyHandle]) -> None:
    proxy = make_proxy(outcomes={"hmac_secret": "s3cret"})
    body = json.dumps({"episode_id": "e2", "success": True}).encode()
    sig = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    url = f"{proxy.base_url}/outcomes"
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=body,
                      headers={"x-tactician-signature": "sha256=" + "0" * 64}).status_code == 401
    assert httpx.post(url, content=body,
                      headers={"x-tactician-signature": f"sha256={sig}"}).status_code == 202
    assert httpx.post(url, content=body,  # hex digits in either case
                      headers={"x-tactician-signature": f"sha256={sig.upper()}"}
                      ).status_code == 202
