"""Server-sent events, read on the side of a relayed stream.

The relay forwards upstream bytes untouched; this parser only watches them to rebuild
the final object (message, tool calls, usage) for the record. It never re-serializes
what the client receives.
"""

from __future__ import annotations

import json
from typing import Any


class SSEParser:
    """Incremental parser: feed raw bytes, get complete ``(event, data)`` pairs."""

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buf += chunk
        out: list[tuple[str | None, str]] = []
        while True:
            idx = self._buf.find(b"\n")
            if idx < 0:
                return out
            raw, self._buf = self._buf[:idx], self._buf[idx + 1 :]
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    out.append((self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value


class StreamAssembler:
    """Rebuilds the final response of a streamed call, for any of the APIs we relay."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.parser = SSEParser()
        self.chunks = 0
        self.done = False
        self._choices: dict[int, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None
        self._anthropic_blocks: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: bytes) -> None:
        for event, data in self.parser.feed(chunk):
            if data.strip() == "[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(data)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self.chunks += 1
                self._on_event(event, obj)

    def _on_event(self, event: str | None, obj: dict[str, Any]) -> None:
        kind = obj.get("type") or event or ""
        if kind in ("response.completed", "response.failed", "response.incomplete",
                    "message_stop"):
            self.done = True
        if self.endpoint.endswith("/responses"):
            if kind in ("response.completed", "response.failed", "response.incomplete"):
                self._final = obj.get("response")
            return
        if self.endpoint.endswith("/messages"):
            self._on_anthropic(kind, obj)
            return
        self._on_chat_chunk(obj)

    def _on_chat_chunk(self, obj: dict[str, Any]) -> None:
        for key in ("id", "object", "created", "model", "system_fingerprint"):
            if key in obj and key not in self._meta:
                self._meta[key] = obj[key]
        if obj.get("usage"):
            self._usage = obj["usage"]
        for ch in obj.get("choices") or []:
            idx = ch.get("index", 0)
            acc = self._choices.setdefault(idx, {"index": idx, "message": {}})
            delta = ch.get("delta")
            if delta is None and "text" in ch:  # legacy /v1/completions chunk
                acc["text"] = acc.get("text", "") + (ch.get("text") or "")
            else:
                _merge_delta(acc["message"], delta or {})
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]

    def _on_anthropic(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "message_start":
            self._final = dict(obj.get("message") or {})
            self._usage = dict(self._final.get("usage") or {})
        elif kind == "content_block_start":
            self._anthropic_blocks[obj.get("index", 0)] = dict(obj.get("content_block") or {})
        elif kind == "content_block_delta":
            block = self._anthropic_blocks.setdefault(obj.get("index", 0), {"type": "text"})
            delta = obj.get("delta") or {}
            if "text" in delta:
                block["text"] = block.get("text", "") + delta["text"]
            if "partial_json" in delta:
                block["input_json"] = block.get("input_json", "") + delta["partial_json"]
        elif kind == "message_delta":
            if self._final is not None:
                self._final.update(obj.get("delta") or {})
            self._usage = {**(self._usage or {}), **(obj.get("usage") or {})}

    def result(self) -> dict[str, Any]:
        if self.endpoint.endswith("/messages") and self._final is not None:
            content = [self._anthropic_blocks[i] for i in sorted(self._anthropic_blocks)]
            return {**self._final, "content": content, "usage": self._usage}
        if self._final is not None:
            return self._final
        out = dict(self._meta)
        out["choices"] = [self._choices[i] for i in sorted(self._choices)]
        if self._usage is not None:
            out["usage"] = self._usage
        return out


def _merge_delta(msg: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            _merge_tool_calls(msg.setdefault("tool_calls", []), value)
        elif key == "function_call" and isinstance(value, dict):
            fc = msg.setdefault("function_call", {})
            for k, v in value.items():
                fc[k] = fc.get(k, "") + v if isinstance(v, str) else v
        elif isinstance(value, str) and key in ("content", "refusal", "reasoning_content"):
            msg[key] = (msg.get(key) or "") + value
        elif value is not None or key not in msg:
            msg[key] = value


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for d in deltas:
        idx = d.get("index", len(calls))
        while len(calls) <= idx:
            calls.append({"function": {"name": "", "arguments": ""}})
        call = calls[idx]
        for key in ("id", "type"):
            if d.get(key):
                call[key] = d[key]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]
