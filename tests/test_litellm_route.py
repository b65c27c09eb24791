"""An OpenAI-speaking agent using a Claude model: routed through litellm to an
Anthropic-compatible upstream (the fake), answered in OpenAI's format."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.conftest import ProxyHandle
from tests.fake_upstream import FakeUpstream

MSGS = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]


def routed(make_proxy: Callable[..., ProxyHandle], fake: FakeUpstream) -> ProxyHandle:
    return make_proxy(routes=[{"model": "claude-*", "litellm_model": "anthropic/claude-test",
                               "api_key": "sk-ant-route", "api_base": fake.url}])  # type: ignore[attr-defined]


def test_litellm_route_non_streaming(make_proxy: Callable[..., ProxyHandle],
                                     fake: FakeUpstream) -> None:
    proxy = routed(make_proxy, fake)
    c = openai.OpenAI(base_url=proxy.base_url, api_key="client", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="claude-3-x", messages=MSGS,
                                                      max_tokens=50)
    resp = raw.parse()
    assert resp.choices[0].message.content == "Claude-ish answer."
    assert resp.model == "claude-3-x"
    seen = fake.received[-1]
    assert seen["path"] == "/v1/messages" and seen["headers"]["x-api-key"] == "sk-ant-route"
    assert seen["body"]["system"] and seen["body"]["model"] == "claude-test"
    row = proxy.wait_rows("SELECT * FROM calls WHERE request_id = ?", 1,
                          [raw.headers["x-request-id"]])[0]
    assert row["provider"] == "litellm" and row["response_text"] == "Claude-ish answer."
    # Unrouted models still go straight to the OpenAI upstream.
    assert c.chat.completions.create(model="gpt-x", messages=MSGS).choices[0].message.content \
        == "Hello from the fake upstream."


def test_litellm_route_streaming(make_proxy: Callable[..., ProxyHandle],
                                 fake: FakeUpstream) -> None:
    proxy = routed(make_proxy, fake)
    c = openai.OpenAI(base_url=proxy.base_url, api_key="client", max_retries=0)
    stream = c.chat.completions.create(model="claude-3-x", messages=MSGS, max_tokens=50,
                                       stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "Claude-ish answer."
    rows = proxy.wait_rows("SELECT * FROM calls WHERE provider = 'litellm' AND stream", 1)
    assert rows[0]["response_text"] == "Claude-ish answer."


def _errors_proxy(make_proxy: Callable[..., ProxyHandle], fake: FakeUpstream) -> ProxyHandle:
    url = fake.url  # type: ignore[attr-defined]
    return make_proxy(upstream={"timeout_s": 1.0}, routes=[
        {"model": f"claude-{name}", "litellm_model": f"anthropic/{target}",
         "api_key": "sk-ant-route", "api_base": url}
        for name, target in (("429", "error-429"), ("401", "error-401"),
                             ("500", "error-500"), ("slow", "slow-3000"), ("drop", "drop"))
    ] + [{"model": "claude-down", "litellm_model": "anthropic/x", "api_key": "k",
          "api_base": "http://127.0.0.1:9"}])


@pytest.mark.parametrize(("model", "status", "stream"), [
    ("claude-429", 429, False), ("claude-401", 401, False), ("claude-500", 500, True),
    ("claude-slow", 504, False), ("claude-slow", 504, True), ("claude-down", 502, False),
])
def test_provider_errors_reach_the_client_in_openai_shape(
        make_proxy: Callable[..., ProxyHandle], fake: FakeUpstream,
        model: str, status: int, stream: bool) -> None:
    proxy = _errors_proxy(make_proxy, fake)
    started = time.perf_counter()
    r = httpx.post(f"{proxy.base_url}/chat/completions", timeout=30, json={
        "model": model, "messages": MSGS, "max_tokens": 5, "stream": stream})
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if status == 429:
        assert r.headers["retry-after"] == "7"
    if status == 504:  # upstream.timeout_s applies to routed models too
        assert time.perf_counter() - started < 2.9
    row = proxy.wait_rows("SELECT * FROM calls WHERE request_id = ?", 1,
                          [r.headers["x-request-id"]])[0]
    assert row["status"] == status and row["error"]


def test_a_provider_stream_cut_midway_is_recorded_as_partial(
        make_proxy: Callable[..., ProxyHandle], fake: FakeUpstream) -> None:
    proxy = _errors_proxy(make_proxy, fake)
    c = openai.OpenAI(base_url=proxy.base_url, api_key="client", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="claude-drop", messages=MSGS,  # type: ignore[call-overload]
                                           max_tokens=5, stream=True):
            pass
    row = proxy.wait_rows("SELECT * FROM calls WHERE model = 'claude-drop'", 1)[0]
    assert row["partial"] and row["error"] and row["response_text"] == "Claude-ish"


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "extra_headers",
                                   "custom_llm_provider", "mock_response"])
def test_a_body_cannot_steer_the_routes_provider_call(
        make_proxy: Callable[..., ProxyHandle], fake: FakeUpstream, field: str) -> None:
    # litellm takes these as keyword arguments: from a body they could send the route's
    # key to a host the client chose.
    proxy = routed(make_proxy, fake)
    before = len(fake.received)
    r = httpx.post(f"{proxy.base_url}/chat/completions", json={
        "model": "claude-3-x", "messages": MSGS, field: "http://127.0.0.1:9"})
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    assert len(fake.received) == before
