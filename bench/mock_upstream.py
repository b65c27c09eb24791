"""A fast mock OpenAI upstream for the overhead and fault benchmarks, and the helper
that runs it as a local subprocess.

``python -m bench.mock_upstream --port 9000 --latency-ms 5``

It speaks just enough HTTP/1.1 (keep-alive, content-length or chunked bodies) on raw
asyncio streams, with uvloop when installed, so it costs far less per request than
any proxy in front of it. ``/v1/chat/completions`` answers after a fixed latency; a
stream sends its first event after the same latency, then ``--chunks`` more events
``--chunk-ms`` apart. The request's ``model`` picks a behaviour:

- ``error-<status>``: that status with an OpenAI error body;
- ``slow-<ms>``: answer (or start streaming) after ``<ms>`` instead of the latency;
- ``slowstream-<ms>``: stream events ``<ms>`` apart;
- ``hang``: never answer; wait for the client to give up (upstream timeouts);
- ``abort``: cut the connection mid-stream (after two events), or before any answer.

Answers open with one of four approach sentences, chosen by the task, so the hint
engine's strategy catalog has something to learn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import zlib
from collections import Counter
from pathlib import Path

from bench.harness.processes import Service
from bench.http1 import parse_headers
from proxy.local_model import free_port

APPROACHES = (
    "I listed the constraints first and then solved each one in order.",
    "I searched the reference documents and quoted the relevant passage.",
    "I wrote a small failing test before changing any code at all.",
    "I restated the question in plain words and answered the simplest reading.",
)
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_HANG_LIMIT_S = 120.0


def _head(status: int, content_type: str, extra: str) -> bytes:
    reason = "OK" if status == 200 else "Error"
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
            f"x-request-id: mock\r\n{extra}\r\n").encode()


def _json_response(status: int, obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return _head(status, "application/json", f"content-length: {len(body)}\r\n") + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(model: str, content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    obj = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
           "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return _chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")


def answer_text(body: bytes) -> str:
    """An approach sentence the strategy catalog can cluster, then an answer."""
    return APPROACHES[zlib.crc32(body) % len(APPROACHES)] + " The answer is 42."


def completion(model: str, text: str) -> dict[str, object]:
    return {"id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}}


class MockUpstream:
    """One server; counters say what it saw (``GET /stats``)."""

    def __init__(self, latency_ms: float, chunks: int, chunk_ms: float) -> None:
        self.latency_s = latency_ms / 1000
        self.chunks = chunks
        self.chunk_s = chunk_ms / 1000
        self.counts: Counter[str] = Counter()

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self._connection, host, port, backlog=4096)
        print(f"mock upstream listening on http://{host}:{port}", flush=True)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError,
                                 asyncio.LimitOverrunError):
            while await self._one(reader, writer):
                pass
        writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, _, header_block = head.partition(b"\r\n")
        method, path, _ = request_line.decode("latin-1").split(" ", 2)
        headers = parse_headers(header_block)
        body = await _read_body(reader, headers)
        keep = headers.get("connection", "").lower() != "close"
        if path.endswith("/chat/completions") and method == "POST":
            keep = await self._chat(reader, writer, body) and keep
        elif path.endswith("/models"):
            writer.write(_json_response(200, {"object": "list", "data": [
                {"id": "mock", "object": "model", "created": 0, "owned_by": "bench"}]}))
        elif path == "/stats":
            writer.write(_json_response(200, dict(self.counts)))
        else:
            writer.write(_json_response(404, {"error": {"message": f"no route {path}"}}))
        await writer.drain()
        return keep

    async def _chat(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    body: bytes) -> bool:
        found = _MODEL.search(body)
        model = found.group(1).decode() if found else "mock"
        stream = _STREAM.search(body) is not None
        self.counts[model.split("-")[0] + (":stream" if stream else "")] += 1
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            err = {"error": {"message": f"mock {status}", "type": "mock_error",
                             "param": None, "code": f"mock_{status}"}}
            writer.write(_json_response(status, err))
            return True
        if model == "hang":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HANG_LIMIT_S):
                    await reader.read()  # returns at EOF: the client gave up
            return False
        delay = int(model.split("-")[1]) / 1000 if model.startswith("slow-") else self.latency_s
        await asyncio.sleep(delay)
        if model == "abort" and not stream:
            writer.transport.abort()
            return False
        if stream:
            return await self._stream(writer, model, body)
        writer.write(_json_response(200, completion(model, answer_text(body))))
        return True

    async def _stream(self, writer: asyncio.StreamWriter, model: str, body: bytes) -> bool:
        gap = int(model.split("-")[1]) / 1000 if model.startswith("slowstream-") \
            else self.chunk_s
        words = answer_text(body).split(" ")
        per = max(1, len(words) // max(self.chunks, 1))
        parts = [" ".join(words[i:i + per]) + " " for i in range(0, len(words), per)]
        writer.write(_head(200, "text/event-stream", "transfer-encoding: chunked\r\n")
                     + _event(model, parts[0]))
        for i, part in enumerate(parts[1:], start=1):
            if model == "abort" and i == 2:
                await writer.drain()
                writer.transport.abort()
                return False
            await asyncio.sleep(gap)
            writer.write(_event(model, part))
        usage = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                 "created": 1700000000, "choices": [],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}}
        writer.write(_event(model, None, "stop")
                     + _chunk(b"data: " + json.dumps(usage).encode() + b"\n\n")
                     + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return b""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(parts)
        parts.append(data[:-2])


def install_uvloop() -> str:
    """Use uvloop when installed: the load tools must stay far cheaper than the proxies."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# -- local subprocesses ------------------------------------------------------------

def mock_service(directory: Path, latency_ms: float, chunks: int = 6,
                 chunk_ms: float = 1.0) -> Service:
    port = free_port()
    command = [sys.executable, "-m", "bench.mock_upstream", "--port", str(port),
               "--latency-ms", str(latency_ms), "--chunks", str(chunks),
               "--chunk-ms", str(chunk_ms)]
    return Service("mock upstream", command, port, directory / "mock.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mock_upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--chunks", type=int, default=6, help="stream events after the first")
    parser.add_argument("--chunk-ms", type=float, default=1.0, help="gap between stream events")
    args = parser.parse_args(argv)
    install_uvloop()
    mock = MockUpstream(args.latency_ms, args.chunks, args.chunk_ms)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(mock.serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
