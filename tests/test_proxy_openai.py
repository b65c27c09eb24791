"""The proxy is transparent to the official openai client, and records every call."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from proxy.sse import StreamAssembler
from tests.conftest import ProxyHandle
from tests.fake_upstream import FakeUpstream

MSGS = [{"role": "user", "content": "Say hello"}]


def client(proxy: ProxyHandle, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-client-secret", max_retries=0,
                         **kw)  # type: ignore[arg-type]


def test_non_streaming_identical_to_direct(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    direct = httpx.post(f"{fake.url}/v1/chat/completions",  # type: ignore[attr-defined]
                        json={"model": "m", "messages": MSGS})
    raw = client(proxy).chat.completions.with_raw_response.create(model="m", messages=MSGS)
    assert raw.http_response.content == direct.content
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream."
    rid = raw.headers["x-request-id"]
    assert raw.headers["x-episode-id"] == rid
    assert raw.headers["x-upstream-request-id"] == "req_upstream_1"
    rows = proxy.wait_rows("SELECT * FROM calls WHERE request_id = ?", 1, [rid])
    row = rows[0]
    assert row["status"] == 200 and row["stream"] is False and row["partial"] is False
    assert row["model"] == "m" and row["endpoint"] == "/v1/chat/completions"
    assert row["total_tokens"] == 17 and row["prompt_tokens"] == 11
    assert row["response_text"] == "Hello from the fake upstream."
    assert json.loads(row["request_json"])["messages"] == MSGS
    assert row["task_text"] == "Say hello"
    assert row["latency_ms"] >= row["upstream_ms"] > 0
    assert row["arm"] is None  # guidance disabled


def test_stream_byte_identical_and_incremental(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    body = {"model": "m", "messages": MSGS, "stream": True,
            "stream_options": {"include_usage": True}}
    direct = httpx.post(f"{fake.url}/v1/chat/completions", json=body)  # type: ignore[attr-defined]
    arrivals: list[float] = []
    chunks: list[bytes] = []
    with httpx.stream("POST", f"{proxy.base_url}/chat/completions", json=body) as resp:
        rid = resp.headers["x-request-id"]
        assert resp.headers["content-type"].startswith("text/event-stream")
        for chunk in resp.iter_raw():
            arrivals.append(time.monotonic())
            chunks.append(chunk)
    assert b"".join(chunks) == direct.content
    # The fake waits 50 ms between chunks: a buffering proxy would deliver all at once.
    assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] > 0.2
    row = proxy.wait_rows("SELECT * FROM calls WHERE request_id = ?", 1, [rid])[0]
    assert row["stream"] is True and row["partial"] is False
    assert row["response_text"] == "Hello from the fake upstream."
    assert row["total_tokens"] == 17
    assert row["ttfb_ms"] < row["latency_ms"]


def test_openai_stream_with_sdk(proxy: ProxyHandle) -> None:
    stream = client(proxy).chat.completions.create(model="m", messages=MSGS, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake upstream."


def test_tool_calls_intact_streamed_and_not(proxy: ProxyHandle) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    c = client(proxy)
    resp = c.chat.completions.create(model="tools", messages=MSGS, tools=tools)  # type: ignore[arg-type]
    call = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    stream = c.chat.completions.create(model="tools", messages=MSGS, tools=tools, stream=True)  # type: ignore[arg-type]
    args = "".join(ch.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index, union-attr]
                   for ch in stream if ch.choices and ch.choices[0].delta.tool_calls)
    assert json.loads(args) == {"city": "Paris"}
    rows = proxy.wait_rows("SELECT response_json FROM calls WHERE model = 'tools' AND stream",
                           1)
    assembled = json.loads(rows[0]["response_json"])
    tool = assembled["choices"][0]["message"]["tool_calls"][0]
    assert tool["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_null_tool_calls_then_a_list_stream_intact(proxy: ProxyHandle) -> None:
    # LiteLLM-style servers send "tool_calls": null before the list.
    stream = client(proxy).chat.completions.create(model="null-tools", messages=MSGS,
                                                   stream=True)
    args = "".join(ch.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index, union-attr]
                   for ch in stream if ch.choices and ch.choices[0].delta.tool_calls)
    assert json.loads(args) == {"city": "Paris"}
    rows = proxy.wait_rows("SELECT response_json FROM calls WHERE model = 'null-tools'", 1)
    tool = json.loads(rows[0]["response_json"])["choices"][0]["message"]["tool_calls"][0]
    assert tool["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_events_the_parser_does_not_expect_reach_the_client_byte_for_byte(
        proxy: ProxyHandle, fake: FakeUpstream) -> None:
    body = {"model": "odd-stream", "messages": MSGS, "stream": True}
    direct = httpx.post(f"{fake.url}/v1/chat/completions", json=body).content  # type: ignore[attr-defined]
    relayed = httpx.post(f"{proxy.base_url}/chat/completions", json=body)
    assert relayed.status_code == 200 and relayed.content == direct
    row = proxy.wait_rows("SELECT * FROM calls WHERE model = 'odd-stream'", 1)[0]
    assert row["status"] == 200 and not row["partial"]
    assert row["response_text"] == "still here"


def test_the_stream_parser_gives_up_instead_of_raising() -> None:
    assembler = StreamAssembler("/v1/messages")
    assembler.feed(b'data: {"type": "message_start", "message": "not an object"}\n\n')
    assembler.feed(b'data: {"type": "message_stop"}\n\n')
    assert assembler.failed and assembler.failed.startswith("ValueError")
    assert not assembler.done  # nothing more is parsed once it failed


def test_a_streamed_anthropic_answer_is_recorded_like_the_unstreamed_one() -> None:
    events = [
        {"type": "message_start", "message": {"id": "m", "role": "assistant", "content": [],
                                              "usage": {"input_tokens": 9}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "Weather, so "}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "call the tool."}},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    ]
    assembler = StreamAssembler("/v1/messages")
    for e in events:
        assembler.feed(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
    out = assembler.result()
    assert out["content"] == [
        {"type": "thinking", "thinking": "Weather, so call the tool."},
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert out["stop_reason"] == "tool_use" and assembler.done


def test_unknown_fields_and_n_pass_through(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    c = client(proxy)
    resp = c.chat.completions.create(
        model="m", messages=MSGS, n=2, response_format={"type": "json_object"},
        extra_body={"vendor_knob": {"x": [1, 2]}},
    )
    assert len(resp.choices) == 2
    sent = fake.received[-1]["body"]
    assert sent["vendor_knob"] == {"x": [1, 2]} and sent["n"] == 2
    assert sent["response_format"] == {"type": "json_object"}


def test_episode_header_groups_calls(proxy: ProxyHandle) -> None:
    c = client(proxy, default_headers={"x-episode-id": "ep-42"})
    r1 = c.chat.completions.with_raw_response.create(model="m", messages=MSGS)
    r2 = c.chat.completions.with_raw_response.create(model="m", messages=MSGS)
    assert r1.headers["x-episode-id"] == r2.headers["x-episode-id"] == "ep-42"
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
    rows = proxy.wait_rows("SELECT * FROM calls WHERE episode_id = 'ep-42'", 2)
    assert len(rows) == 2


def test_async_client(proxy: ProxyHandle) -> None:
    async def main() -> list[str]:
        ac = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
        results = await asyncio.gather(*[
            ac.chat.completions.create(model="m", messages=MSGS) for _ in range(8)])
        stream = await ac.chat.completions.create(model="m", messages=MSGS, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await ac.close()
        return [r.choices[0].message.content or "" for r in results] + [text]

    out = asyncio.run(main())
    assert out == ["Hello from the fake upstream."] * 9
    assert len(proxy.wait_rows("SELECT 1 FROM calls", 9)) == 9


def test_other_endpoints_forwarded_and_recorded(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    c = client(proxy)
    assert c.completions.create(model="m", prompt="Hello").choices[0].text == " world"
    emb = c.embeddings.create(model="e", input=["a", "b"])
    assert len(emb.data) == 2
    assert [m.id for m in c.models.list()] == ["fake-model"]
    resp = c.responses.create(model="m", input="Do the thing", instructions="Be brief.")
    assert resp.output_text == "Responses answer."
    events = list(c.responses.create(model="m", input="Do the thing", stream=True))
    assert events[-1].type == "response.completed"
    # Any other /v1 path passes through, method and query included.
    r = httpx.delete(f"{proxy.base_url}/files/file-1?purge=yes")
    assert r.json() == {"id": "file-1", "object": "file", "method": "DELETE",
                        "query": "purge=yes"}
    rows = proxy.wait_rows("SELECT endpoint, response_text, stream FROM calls", 7)
    endpoints = sorted(r["endpoint"] for r in rows)
    assert endpoints == sorted(["/v1/completions", "/v1/embeddings", "/v1/models",
                                "/v1/responses", "/v1/responses", "/v1/files/file-1",
                                "/v1/chat/completions"][:len(endpoints)])
    streamed = [r for r in rows if r["endpoint"] == "/v1/responses" and r["stream"]]
    assert streamed[0]["response_text"] == "Responses answer."


def test_upstream_cookies_reach_their_client_only(proxy: ProxyHandle,
                                                 fake: FakeUpstream) -> None:
    """One client's upstream session cookie must never ride on another client's call."""
    url = f"{proxy.base_url}/chat/completions"
    first = httpx.post(url, json={"model": "set-cookie", "messages": MSGS})
    assert first.headers["set-cookie"] == "session=for-this-client-only; Path=/"
    httpx.post(url, json={"model": "m", "messages": MSGS})
    assert "cookie" not in fake.received[-1]["headers"]
    httpx.post(url, json={"model": "m", "messages": MSGS}, headers={"cookie": "mine=1"})
    assert fake.received[-1]["headers"]["cookie"] == "mine=1"


def test_anthropic_messages(make_proxy: object, fake: FakeUpstream) -> None:
    url = fake.url + "/v1"  # type: ignore[attr-defined]
    proxy = make_proxy(upstream={"anthropic_base_url": url,  # type: ignore[operator]
                                 "anthropic_api_key": "sk-ant-server"})
    body = {"model": "claude-x", "max_tokens": 50, "system": "Be kind.",
            "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(f"{proxy.base_url}/messages", json=body,
                   headers={"x-api-key": "client-key", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "Claude-ish answer."
    seen = fake.received[-1]
    assert seen["path"] == "/v1/messages" and seen["headers"]["x-api-key"] == "sk-ant-server"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    with httpx.stream("POST", f"{proxy.base_url}/messages", json={**body, "stream": True}) as s:
        raw = b"".join(s.iter_raw())
    assert b"message_stop" in raw
    rows = proxy.wait_rows("SELECT * FROM calls WHERE endpoint = '/v1/messages'", 2)
    assert {r["response_text"] for r in rows} == {"Claude-ish answer."}
    assert {r["system_text"] for r in rows} == {"Be kind."}
    assert all(r["total_tokens"] == 12 for r in rows)


def test_messages_without_anthropic_upstream_is_clear_error(proxy: ProxyHandle) -> None:
    r = httpx.post(f"{proxy.base_url}/messages", json={"model": "c", "messages": []})
    assert r.status_code == 501
    assert r.json()["error"]["code"] == "not_configured"


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_upstream_errors_pass_through(proxy: ProxyHandle, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model=f"error-{status}", messages=MSGS)
    err = info.value
    assert err.status_code == status
    assert err.body["code"] == f"fake_{status}"  # type: ignore[index]
    if status == 429:
        assert err.response.headers["retry-after"] == "7"
    rid = err.response.headers["x-request-id"]
    row = proxy.wait_rows("SELECT status FROM calls WHERE request_id = ?", 1, [rid])[0]
    assert row["status"] == status
