"""The small model's embeddings of task texts, kept in a file between replays.

Embedding every task text of a world's 20 seeds takes minutes on 2 cores, and it is
the same work on every run; the rules the replay judges take seconds. With a file, a
second ``bench.replay --meaning`` run over the same worlds embeds nothing. Vectors are
keyed by the normalized text (as the proxy's embedder caches them) and the file is
tagged with the model file's name and size: vectors of another model would silently
measure something else, so a file for another model is refused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from proxy.hints.embedder import PROMPT_HEAD, PROMPT_TAIL
from proxy.hints.text import Vector, normalize


def model_tag(model: Path, *, f16: bool) -> str:
    """The model file, the weights it is evaluated from and the embedder's prompt."""
    weights = "f16" if f16 else "as-is"
    return f"{model.name}:{model.stat().st_size}:{weights}:{PROMPT_HEAD}{{task}}{PROMPT_TAIL}"


class EmbeddingsFile:
    def __init__(self, path: Path, tag: str) -> None:
        self.path = path
        self.tag = tag
        self.vectors: dict[str, Vector] = {}
        self.added = 0
        if path.exists():
            self._read()

    def _read(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                tag = str(data["tag"])
                keys, vectors = data["keys"], data["vectors"]
                read = {str(k): v for k, v in zip(keys, vectors, strict=True)}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise SystemExit(f"{self.path}: not an embeddings file ({exc})") from exc
        if tag != self.tag:
            raise SystemExit(f"{self.path}: embeddings of {tag}, not of {self.tag}: "
                             "use another file or delete this one")
        self.vectors = read

    def wrap(self, embed: Callable[[str], Vector]) -> Callable[[str], Vector]:
        """``embed``, answered from the file where the text is in it."""
        def cached(text: str) -> Vector:
            key = normalize(text)
            vec = self.vectors.get(key)
            if vec is None:
                vec = self.vectors[key] = np.asarray(embed(text), dtype=np.float32)
                self.added += 1
            return vec
        return cached

    def save(self) -> None:
        """Rewrite the file if anything was added (atomically: a replace)."""
        if not self.added:
            return
        keys = sorted(self.vectors)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, tag=np.array(self.tag), keys=np.array(keys),
                 vectors=np.stack([self.vectors[k] for k in keys]))
        tmp.replace(self.path)
        self.added = 0
