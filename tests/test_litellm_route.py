"""An OpenAI-speaking agent using a Claude model: routed through litellm to an
Anthropic-compatible upstream (the fake), answered in OpenAI's format."""

from __future__ import annotations

from collections.abc import Callable

import openai

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
