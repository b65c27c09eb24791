"""The relay at its edges: paths, methods, headers, odd bodies and hung-up clients,
each through a real proxy to the fake upstream on loopback sockets."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import openai
import pytest

from tests.conftest import ProxyHandle
from tests.fake_upstream import AUDIO_CHUNKS, FakeUpstream

MSGS = [{"role": "user", "content": "Do the task"}]


def raw_request(proxy: ProxyHandle, head: str, body: bytes = b"",
                close_early: bool = False) -> bytes:
    """Send bytes exactly as written (no client-side path normalisation)."""
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        if close_early:
            return b""
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def error_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)["error"]


@pytest.mark.parametrize("path", ["/v1/../internal/admin", "/v1/%2e%2e/internal/admin",
                                  "/v1/files/./x", "/v1/raw/%2E%2E/%2e%2e/admin"])
def test_dot_segments_never_leave_v1(proxy: ProxyHandle, fake: FakeUpstream,
                                     path: str) -> None:
    # The upstream host gets the proxy's own credential: no path may walk out of /v1.
    before = len(fake.received)
    status, err = error_of(raw_request(
        proxy, f"GET {path} HTTP/1.1\nHost: x\nConnection: close\n"))
    assert (status, err["code"]) == (400, "invalid_path")
    assert len(fake.received) == before


def test_the_path_reaches_the_upstream_as_the_client_encoded_it(proxy: ProxyHandle) -> None:
    r = httpx.get(f"{proxy.base_url}/raw/file%2Fabc/a%3Fb/100%25?x=1&y=%2F")
    assert r.status_code == 200
    assert r.json()["raw_path"] == "/v1/raw/file%2Fabc/a%3Fb/100%25"
    assert r.json()["query"] == "x=1&y=%2F"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/outcomes", 405), ("PUT", "/v1/outcomes", 405),
    ("POST", "/v1/tactician/stats", 405), ("GET", "/v1/tactician/snapshot", 405),
    ("GET", "/v1/tactician/anything", 404),
])
def test_the_proxys_own_paths_are_never_relayed(proxy: ProxyHandle, fake: FakeUpstream,
                                                method: str, path: str, status: int) -> None:
    before = len(fake.received)
    r = httpx.request(method, proxy.url + path, headers={"authorization": "Bearer tok"})
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert len(fake.received) == before


def test_header_values_pass_as_bytes_and_in_order(proxy: ProxyHandle) -> None:
    head = ("GET /v1/raw/h HTTP/1.1\nHost: x\nConnection: close\nX-Title: Caf\xe9\n"
            "X-Dup: one\nX-Dup: two\nExpect: 100-continue\n")
    answer = raw_request(proxy, head)
    answer = answer[answer.index(b"HTTP/1.1 200"):]  # after the interim 100 Continue
    _, _, body = answer.partition(b"\r\n\r\n")
    got = [(k, v) for k, v in json.loads(body)["headers"] if k.startswith(("x-", "expect"))]
    assert got == [("x-title", "Caf\xe9"), ("x-dup", "one"), ("x-dup", "two")]
    assert answer.lower().count(b"\r\ndate:") == 1


def test_the_proxys_key_replaces_every_client_credential(make_proxy: type) -> None:
    proxy = make_proxy(upstream={"api_key": "sk-proxy"})
    r = httpx.get(f"{proxy.base_url}/raw/k", headers={
        "authorization": "Bearer sk-client", "api-key": "sk-client", "x-api-key": "sk-client"})
    sent = dict(r.json()["headers"])
    assert sent["authorization"] == "Bearer sk-proxy"
    assert "sk-client" not in json.dumps(r.json())


@pytest.mark.parametrize("body", [
    b'{"model": "m", "messages": 5}', b'{"model": "m", "messages": true}',
    b'{"model": "m", "messages": "Do the task"}',
])
def test_bodies_of_the_wrong_shape_go_to_the_upstream_untouched(
        proxy: ProxyHandle, fake: FakeUpstream, body: bytes) -> None:
    # The upstream judges the shape of its own API; the proxy must not crash on it.
    r = httpx.post(f"{proxy.base_url}/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200 and fake.received[-1]["raw"] == body


def test_deep_nesting_is_a_400(proxy: ProxyHandle) -> None:
    deep = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for path in ("/chat/completions", "/outcomes"):
        r = httpx.post(proxy.base_url + path, content=deep,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_a_lone_surrogate_loses_nothing(proxy: ProxyHandle) -> None:
    # JavaScript clients that cut a string mid-emoji send "\ud800" escapes.
    body = b'{"model": "m", "messages": [{"role": "user", "content": "cut \\ud83d here"}]}'
    r = httpx.post(f"{proxy.base_url}/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    note = b'{"request_id": "%s", "success": true, "note": "half \\udc00 emoji", ' \
           b'"metadata": {"k": "\\ud800"}}' % rid.encode()
    assert httpx.post(f"{proxy.base_url}/outcomes", content=note).status_code == 202
    row = proxy.wait_rows("SELECT * FROM calls WHERE request_id = ?", 1, [rid])[0]
    assert row["task_text"] == "cut \ufffd here"
    outcome = proxy.wait_rows("SELECT * FROM outcomes WHERE request_id = ?", 1, [rid])[0]
    assert outcome["note"] == "half \ufffd emoji" and outcome["success"] is True
    assert proxy.services.recorder.stats.write_errors == 0


def test_outcome_ids_follow_the_episode_header_rule(proxy: ProxyHandle) -> None:
    for bad in ("has space", "caf\u00e9", "x" * 201, "line\n"):
        r = httpx.post(f"{proxy.base_url}/outcomes", json={"episode_id": bad, "success": True})
        assert r.status_code == 422 and r.json()["error"]["param"] == "episode_id"


def test_non_ascii_credentials_are_refused_not_crashed(make_proxy: type) -> None:
    proxy = make_proxy(outcomes={"token": "tok", "hmac_secret": "s"}, admin={"token": "adm"})
    bad = {b"authorization": "Bearer caf\xe9".encode("latin-1"),
           b"x-tactician-signature": "sha256=\xe9".encode("latin-1")}
    for path in ("/v1/outcomes", "/v1/tactician/snapshot"):
        r = httpx.post(proxy.url + path, content=b"{}", headers=bad)
        assert r.status_code == 401, (path, r.text)


def test_audio_is_relayed_as_it_arrives(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    c = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test")
    started = time.perf_counter()
    with c.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="hello") as resp:
        chunks = resp.iter_bytes()
        first = next(chunks)
        first_at = time.perf_counter() - started
        data = first + b"".join(chunks)
    assert data == b"".join(bytes([i]) * 4096 for i in range(AUDIO_CHUNKS))
    # The whole answer takes AUDIO_CHUNKS delays; the first byte must not wait for it.
    assert first_at < (AUDIO_CHUNKS - 2) * fake.chunk_delay
    row = proxy.wait_rows("SELECT * FROM calls WHERE endpoint = '/v1/audio/speech'", 1)[0]
    assert row["status"] == 200 and row["response_json"] is None


def test_a_compressed_stream_arrives_readable(proxy: ProxyHandle) -> None:
    r = httpx.post(f"{proxy.base_url}/gzip-events", json={"model": "m", "stream": True})
    assert "content-encoding" not in r.headers
    assert r.content.startswith(b'data: {"choices"') and r.content.endswith(b"[DONE]\n\n")


def test_a_client_that_hangs_up_mid_upload_is_recorded_quietly(
        proxy: ProxyHandle, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        for path in ("/v1/chat/completions", "/v1/outcomes"):
            raw_request(proxy, f"POST {path} HTTP/1.1\nHost: x\nContent-Type: "
                        "application/json\nContent-Length: 1000\n", b'{"model": ',
                        close_early=True)
        rows = proxy.wait_rows("SELECT * FROM calls WHERE status = 499", 1)
        time.sleep(0.3)
    assert rows and rows[0]["error"] == "client disconnected"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_head_keeps_the_upstreams_content_length(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    direct = httpx.head(f"{fake.url}/v1/models")  # type: ignore[attr-defined]
    relayed = httpx.head(f"{proxy.base_url}/models")
    assert relayed.status_code == 200 and relayed.content == b""
    assert relayed.headers["content-length"] == direct.headers["content-length"] != "0"
