"""What the proxy reads from and writes into request/response bodies of each API.

Chat Completions, Responses and Anthropic Messages put the system prompt, the user's
task and the answer in different places; this module is the one map of those places.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, Literal

from proxy.errors import InvalidJSON

HINT_OPEN = "[Strategy hint]"
HINT_CLOSE = "[/Strategy hint]"


def parse_json(raw: bytes, what: str) -> Any:
    """Parse a JSON body; anything unparseable, deep nesting included, is a 400."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidJSON(f"{what} is not valid JSON: nested too deeply") from None


def _text_of(content: Any) -> str:
    """Plain text of a message content: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _messages(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    if endpoint.endswith("/responses"):
        inp = body.get("input")
        if isinstance(inp, str):
            return [{"role": "user", "content": inp}]
        return [m for m in inp if isinstance(m, dict)] if isinstance(inp, list) else []
    msgs = body.get("messages")
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


def user_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    if endpoint.endswith("/completions") and not endpoint.endswith("/chat/completions"):
        prompt = body.get("prompt")
        return [prompt] if isinstance(prompt, str) else []
    return [
        _text_of(m.get("content"))
        for m in _messages(endpoint, body)
        if m.get("role") == "user"
    ]


def system_text(endpoint: str, body: dict[str, Any]) -> str:
    parts: list[str] = []
    if endpoint.endswith("/messages"):
        parts.append(_text_of(body.get("system")))
    elif endpoint.endswith("/responses") and isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])
    for m in _messages(endpoint, body):
        if m.get("role") in ("system", "developer"):
            parts.append(_text_of(m.get("content")))
    return "\n".join(p for p in parts if p)


def task_text(endpoint: str, body: dict[str, Any], source: str) -> str | None:
    texts = [t for t in user_texts(endpoint, body) if t.strip()]
    if not texts:
        return None
    return texts[-1] if source == "last_user" else texts[0]


def response_text(endpoint: str, obj: dict[str, Any]) -> str | None:
    """The assistant's text in a (possibly assembled) response object."""
    if endpoint.endswith("/messages"):
        return _text_of(obj.get("content")) or None
    if endpoint.endswith("/responses"):
        if isinstance(obj.get("output_text"), str):
            return str(obj["output_text"])
        texts = [
            _text_of(item.get("content"))
            for item in obj.get("output") or []
            if isinstance(item, dict) and item.get("type") == "message"
        ]
        return "\n".join(texts) or None
    choices = obj.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    first = choices[0]
    if isinstance(first.get("text"), str):
        return str(first["text"])
    return _text_of((first.get("message") or {}).get("content")) or None


def usage(obj: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None, None, None
    prompt = u.get("prompt_tokens", u.get("input_tokens"))
    completion = u.get("completion_tokens", u.get("output_tokens"))
    total = u.get("total_tokens")
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    return _int(prompt), _int(completion), _int(total)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def hint_block(hint: str) -> str:
    return f"{HINT_OPEN}\n{hint}\n{HINT_CLOSE}"


def inject_hint(endpoint: str, body: dict[str, Any], hint: str,
                position: Literal["end", "start"] = "end") -> dict[str, Any] | None:
    """Return a copy of ``body`` with the hint in its system prompt (a new one when it
    has none); None when the body's system prompt or messages have a shape the API does
    not define: the upstream should see, and reject, the client's own bytes. The
    caller's object is never modified.

    ``position`` "end" puts the hint after the client's system prompt, so everything
    the client sent before it stays a byte-identical prefix and the upstream's prompt
    cache (OpenAI's automatic one, Anthropic's ``cache_control`` breakpoints, a local
    server's KV cache) still serves it; "start" puts it before."""
    out = copy.copy(body)
    add = _append if position == "end" else _prepend
    block = hint_block(hint)
    if endpoint.endswith("/messages"):
        if not isinstance(body.get("system"), str | list | None):
            return None
        out["system"] = add(body.get("system"), block)
    elif endpoint.endswith("/responses"):
        inst = body.get("instructions")
        if not isinstance(inst, str | None):
            return None
        out["instructions"] = add(inst, block)
    else:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        injected = _inject_messages(messages, block, add)
        if injected is None:
            return None
        out["messages"] = injected
    return out


_Add = Callable[[Any, str], Any]


def _inject_messages(messages: list[Any], block: str, add: _Add) -> list[Any] | None:
    """The hint joins the last system/developer message of the run that opens the
    conversation (the static part a prompt cache keys on); a conversation that does not
    open with one gets a new system message first."""
    lead = 0
    while lead < len(messages) and _is_system(messages[lead]):
        lead += 1
    if lead == 0:
        return [{"role": "system", "content": block}, *messages]
    msgs = list(messages)
    at = lead - 1 if add is _append else 0
    content = msgs[at].get("content")
    if not isinstance(content, str | list | None):
        return None
    msgs[at] = {**msgs[at], "content": add(content, block)}
    return msgs


def _is_system(m: Any) -> bool:
    return isinstance(m, dict) and m.get("role") in ("system", "developer")


def _append(content: Any, block: str) -> Any:
    if isinstance(content, list):
        return [*content, {"type": "text", "text": block}]
    if isinstance(content, str) and content:
        return f"{content}\n\n{block}"
    return block


def _prepend(content: Any, block: str) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": block}, *content]
    if isinstance(content, str) and content:
        return f"{block}\n\n{content}"
    return block
