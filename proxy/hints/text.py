"""Cheap text normalization and hashed bag-of-words vectors for task similarity.

A task's vector is built from word unigrams and bigrams hashed into a fixed number of
dimensions, L2-normalized, so cosine similarity is one dot product. It costs tens of
microseconds per task on CPU, needs no model and no hub, and matches tasks that share
vocabulary, which is what "tasks like this one" means for an agent's workload.
"""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"[a-z0-9]+(?:['&-][a-z0-9]+)*")
_NUMBER = re.compile(r"^\d+([.,]\d+)?$")
STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "at", "by", "from",
    "is", "are", "was", "were", "be", "been", "it", "this", "that", "these", "those", "i",
    "we", "you", "he", "she", "they", "my", "our", "your", "its", "their", "as", "then",
    "than", "so", "but", "if", "not", "no", "do", "did", "done", "i'd", "i'll", "i've", "used",
    "use", "using", "took", "take", "chose", "choose", "would", "will",
})
Vector = npt.NDArray[np.float32]


def normalize(text: str) -> str:
    return " ".join(words(text))


def words(text: str) -> list[str]:
    """Lowercased word tokens; every number becomes one token (slot values vary)."""
    return ["<num>" if _NUMBER.match(w) else w for w in _WORD.findall(text.lower())]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, 1.0 if (value >> 63) & 1 else -1.0


class Vectorizer:
    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim

    def features(self, text: str) -> list[str]:
        toks = content_words(text)
        return toks + [f"{a} {b}" for a, b in itertools.pairwise(toks)]

    def vector(self, text: str) -> Vector:
        vec = np.zeros(self.dim, dtype=np.float32)
        for feat in self.features(text):
            idx, sign = _bucket(feat, self.dim)
            vec[idx] += sign
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec
