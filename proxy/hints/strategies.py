"""Strategies recovered from what the big model said it did.

An answer usually states its approach up front ("I used X: ..."). The first sentence of
an answer is taken as its *approach sentence*; sentences that are near-identical (word
overlap) are one strategy. No list of strategies is configured anywhere: the catalog
is learned from the traffic. Each strategy gets a short *label* (its first distinctive
content words) that the small model can generate cheaply, and a canonical sentence
that the hint quotes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from proxy.hints.text import STOPWORDS, content_words, jaccard, words

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_WORDS = 3
SAME_STRATEGY = 0.6  # word-set Jaccard above which two approach sentences are one strategy
LABEL_WORDS = 3


def approach_sentence(text: str | None) -> str | None:
    """The first sentence with enough words to describe an approach."""
    if not text:
        return None
    for sentence in _SENTENCE_END.split(text.strip()):
        sentence = sentence.strip()
        if len(words(sentence)) >= MIN_WORDS:
            return sentence[:300]
    return None


@dataclass
class Strategy:
    id: str
    text: str
    label: str
    count: int = 0


def _sid(text: str) -> str:
    return hashlib.sha256(" ".join(words(text)).encode()).hexdigest()[:10]


class StrategyCatalog:
    """Online clustering of approach sentences into strategies."""

    def __init__(self) -> None:
        self._by_id: dict[str, Strategy] = {}
        self._sets: dict[str, set[str]] = {}
        self._exact: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Any:
        return iter(self._by_id.values())

    def get(self, sid: str) -> Strategy | None:
        return self._by_id.get(sid)

    def assign(self, response_text: str | None) -> str | None:
        """Strategy id for an answer, creating a new strategy for a new approach."""
        sentence = approach_sentence(response_text)
        if sentence is None:
            return None
        key = " ".join(words(sentence))
        sid = self._exact.get(key)
        if sid is None:
            sid = self._nearest(set(content_words(sentence)))
        if sid is None:
            sid = self._add(sentence)
        self._exact[key] = sid
        self._by_id[sid].count += 1
        return sid

    def _nearest(self, wordset: set[str]) -> str | None:
        best, best_sim = None, SAME_STRATEGY
        for sid, other in self._sets.items():
            sim = jaccard(wordset, other)
            if sim >= best_sim:
                best, best_sim = sid, sim
        return best

    def _add(self, sentence: str) -> str:
        sid = _sid(sentence)
        self._by_id[sid] = Strategy(sid, sentence, self._unique_label(sentence))
        self._sets[sid] = set(content_words(sentence))
        return sid

    def _unique_label(self, sentence: str) -> str:
        toks = [w for w in content_words(sentence) if w not in STOPWORDS] or words(sentence)
        taken = {s.label for s in self._by_id.values()}
        for n in range(LABEL_WORDS, len(toks) + 1):
            label = " ".join(toks[:n])
            if label not in taken:
                return label
        return " ".join(toks) + f" {len(taken)}"

    def resolve(self, label: str) -> str | None:
        """Strategy id for a label the small model generated (tolerates small slips)."""
        target = " ".join(words(label))
        if not target:
            return None
        best, best_sim = None, 0.5
        for s in self._by_id.values():
            if s.label == target:
                return s.id
            sim = jaccard(set(target.split()), set(s.label.split()))
            if sim > best_sim:
                best, best_sim = s.id, sim
        return best

    def to_json(self) -> str:
        return json.dumps([asdict(s) for s in self._by_id.values()], ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> StrategyCatalog:
        cat = cls()
        for item in json.loads(text):
            s = Strategy(**item)
            cat._by_id[s.id] = s
            cat._sets[s.id] = set(content_words(s.text))
            cat._exact[" ".join(words(s.text))] = s.id
        return cat


def hint_text(strategy: Strategy) -> str:
    """What the big model is told. It quotes how a successful answer described its
    approach, so the strategy is named in the model's own words."""
    return (
        "Approach that has worked best for similar tasks — follow it: "
        f"\"{strategy.text}\""
    )
