"""The labels an adapter gave when the gate scored it, kept in its version folder.

The next night begins by scoring the serving adapter on nearly the same tasks: held-out
episodes stay held out (chosen by a hash of their id) and the replay sample of older
episodes moves slowly. A greedy label depends only on the base model, the adapter, the
prompt and the token limit, so the labels the gate generated for this adapter the night
it was promoted are reused, and only tasks new since then are generated: most of a
~80 s pass on a 2-core machine. Labels from another base, prompt or token limit are
ignored (the fingerprint differs), as is a file that cannot be read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from proxy.hints.prompt import STOP, render

FILE = "labels.json"


def fingerprint(base_sha256: str, max_tokens: int) -> str:
    text = json.dumps([base_sha256, render("{task}"), STOP, max_tokens])
    return hashlib.sha256(text.encode()).hexdigest()


def dumps(labels: dict[str, str], fp: str) -> str:
    return json.dumps({"fingerprint": fp, "labels": labels}, ensure_ascii=False)


def load(version_dir: Path, fp: str) -> dict[str, str]:
    """task -> label, or nothing when there is no usable file."""
    try:
        data = json.loads((version_dir / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != fp:
        return {}
    labels = data.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
