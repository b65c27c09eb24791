"""Server-sent events, read on the side of a relayed stream.

The relay forwards upstream bytes untouched; this parser only watches them to rebuild
the final object (message, tool calls, usage) for the record. It never re-serializes
what the client receives.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("tactician.sse")
# Tool-call indices arrive in order; a far larger one is garbage, not a reason to
# allocate a list of that length.
MAX_INDEX_GAP = 64


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
        self.failed: str | None = None
        self._choices: dict[int, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None
        self._anthropic_blocks: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: bytes) -> None:
        """Watch one chunk. Never raises: an upstream whose events have shapes this
        parser does not expect must still reach the client byte for byte, so the
        parser gives up on the record (``failed``) instead."""
        if self.failed:
            return
        try:
            self._feed(chunk)
        except Exception as exc:  # noqa: BLE001 - the relay must not depend on the parser
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("stream not understood, relayed without a parsed record: %s",
                        self.failed)

    def _feed(self, chunk: bytes) -> None:
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
            final = obj.get("response")
            if kind in ("response.completed", "response.failed", "response.incomplete") \
                    and isinstance(final, dict):
                self._final = final
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
        choices = obj.get("choices")
        for ch in choices if isinstance(choices, list) else []:
            idx = ch.get("index", 0) if isinstance(ch, dict) else None
            if not isinstance(idx, int):
                continue
            acc = self._choices.setdefault(idx, {"index": idx, "message": {}})
            delta = ch.get("delta")
            if delta is None and "text" in ch:  # legacy /v1/completions chunk
                acc["text"] = _concat(acc.get("text"), ch.get("text"))
            elif isinstance(delta, dict):
                _merge_delta(acc["message"], delta)
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]

    def _on_anthropic(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "message_start":
            self._final = dict(obj.get("message") or {})
            self._usage = dict(self._final.get("usage") or {})
        elif kind == "content_block_start":
            index, block = obj.get("index", 0), obj.get("content_block")
            if isinstance(index, int) and isinstance(block, dict):
                self._anthropic_blocks[index] = dict(block)
        elif kind == "content_block_delta":
            index, delta = obj.get("index", 0), obj.get("delta")
            if not isinstance(index, int) or not isinstance(delta, dict):
                return
            block = self._anthropic_blocks.setdefault(index, {"type": "text"})
            for key in ("text", "partial_json", "thinking", "signature"):
                if key in delta:
                    block[key] = _concat(block.get(key), delta[key])
        elif kind == "message_delta":
            if self._final is not None:
                self._final.update(obj.get("delta") or {})
            self._usage = {**(self._usage or {}), **(obj.get("usage") or {})}

    def result(self) -> dict[str, Any]:
        if self.endpoint.endswith("/messages") and self._final is not None:
            content = [_finished_block(self._anthropic_blocks[i])
                       for i in sorted(self._anthropic_blocks)]
            return {**self._final, "content": content, "usage": self._usage}
        if self._final is not None:
            return self._final
        out = dict(self._meta)
        out["choices"] = [self._choices[i] for i in sorted(self._choices)]
        if self._usage is not None:
            out["usage"] = self._usage
        return out


def _finished_block(block: dict[str, Any]) -> dict[str, Any]:
    """A tool_use block as the non-streamed answer has it: the streamed JSON pieces
    parsed into ``input`` (kept as text only if they do not parse)."""
    pieces = block.get("partial_json")
    if not isinstance(pieces, str):
        return block
    out = {k: v for k, v in block.items() if k != "partial_json"}
    try:
        out["input"] = json.loads(pieces) if pieces else {}
    except ValueError:
        out["input_json"] = pieces
    return out


def _concat(acc: Any, piece: Any) -> Any:
    """Append a streamed text piece; a piece that is not text replaces nothing."""
    if not isinstance(piece, str):
        return acc
    return (acc if isinstance(acc, str) else "") + piece


def _merge_delta(msg: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            if not isinstance(msg.get("tool_calls"), list):
                msg["tool_calls"] = []  # an earlier chunk may have sent null
            _merge_tool_calls(msg["tool_calls"], value)
        elif key == "function_call" and isinstance(value, dict):
            if not isinstance(msg.get("function_call"), dict):
                msg["function_call"] = {}
            _merge_fields(msg["function_call"], value)
        elif isinstance(value, str) and key in ("content", "refusal", "reasoning_content"):
            msg[key] = _concat(msg.get(key), value)
        elif value is not None or key not in msg:
            msg[key] = value


def _merge_fields(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Strings accumulate; other values (null included) set a field only once."""
    for k, v in delta.items():
        if isinstance(v, str):
            acc[k] = _concat(acc.get(k), v)
        elif v is not None or k not in acc:
            acc[k] = v


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[Any]) -> None:
    for d in deltas:
        if not isinstance(d, dict):
            continue
        idx = d.get("index", len(calls))
        if not isinstance(idx, int) or not 0 <= idx < len(calls) + MAX_INDEX_GAP:
            continue
        while len(calls) <= idx:
            calls.append({"function": {"name": "", "arguments": ""}})
        call = calls[idx]
        for key in ("id", "type"):
            if isinstance(d.get(key), str) and d[key]:
                call[key] = d[key]
        fn = d.get("function")
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                call["function"][key] = _concat(call["function"][key], fn.get(key))
