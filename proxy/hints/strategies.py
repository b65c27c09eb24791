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
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from proxy.hints.aliases import Aliases
from proxy.hints.text import content_words, jaccard, words

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
    """Online clustering of approach sentences into strategies, plus the phrasings that
    answer each other's hints (``aliases``), which are one approach."""

    def __init__(self) -> None:
        self._by_id: dict[str, Strategy] = {}
        self._order: dict[str, int] = {}  # first sighting
        self.aliases = Aliases()
        self._sets: dict[str, set[str]] = {}
        self._exact: dict[str, str] = {}
        # word -> strategies using it, so matching a new sentence looks only at
        # strategies that share its rarest words instead of scanning them all.
        self._postings: dict[str, set[str]] = {}
        self._labels: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Strategy]:
        return iter(self._by_id.values())

    def get(self, sid: str) -> Strategy | None:
        return self._by_id.get(sid)

    def assign(self, response_text: str | None) -> str | None:
        """Strategy id for an answer, creating a new strategy for a new approach."""
        sentence = approach_sentence(response_text)
        if sentence is None:
            return None
        sid = self.match(sentence)
        if sid is None:
            sid = self._add(sentence)
        self._exact[" ".join(words(sentence))] = sid
        self._by_id[sid].count += 1
        return sid

    def match(self, sentence: str) -> str | None:
        """The strategy an approach sentence belongs to, if it is known."""
        sid = self._exact.get(" ".join(words(sentence)))
        return sid if sid is not None else self._nearest(set(content_words(sentence)))

    def observe_hint(self, hinted: str | None, used: str | None) -> None:
        """A guided call was hinted ``hinted`` and its answer used ``used``."""
        if hinted is not None and used is not None and hinted in self._by_id:
            self.aliases.observe(hinted, used)

    def observe_recorded_hint(self, hint: str | None, used: str | None) -> None:
        """The same, from a call's recorded ``hint_text`` (None when it had no hint)."""
        sentence = hinted_sentence(hint)
        if sentence is not None:
            self.observe_hint(self.match(sentence), used)

    def renames(self) -> dict[str, str]:
        """Id → the id of its group, for strategies grouped with an older one."""
        return self.aliases.roots(lambda sid: self._order.get(sid, len(self._order)))

    def canonical(self, sid: str) -> str:
        return self.renames().get(sid, sid)

    def _nearest(self, wordset: set[str]) -> str | None:
        # Two sentences with Jaccard >= 0.6 share most words, so they share at least
        # one of the sentence's three rarest words.
        rare = sorted(wordset, key=lambda w: (len(self._postings.get(w, ())), w))[:3]
        candidates: set[str] = set().union(*(self._postings.get(w, set()) for w in rare))
        best, best_sim = None, SAME_STRATEGY
        for sid in sorted(candidates):
            sim = jaccard(wordset, self._sets[sid])
            if sim >= best_sim:
                best, best_sim = sid, sim
        return best

    def _index(self, sid: str, wordset: set[str]) -> None:
        self._sets[sid] = wordset
        for w in wordset:
            self._postings.setdefault(w, set()).add(sid)

    def _add(self, sentence: str) -> str:
        sid = _sid(sentence)
        self._order[sid] = len(self._order)
        self._by_id[sid] = Strategy(sid, sentence, self._unique_label(sentence))
        self._index(sid, set(content_words(sentence)))
        return sid

    def _unique_label(self, sentence: str) -> str:
        toks = content_words(sentence) or words(sentence)
        label = " ".join(toks) + f" {len(self._labels)}"
        for n in range(LABEL_WORDS, len(toks) + 1):
            if " ".join(toks[:n]) not in self._labels:
                label = " ".join(toks[:n])
                break
        self._labels.add(label)
        return label

    def completion_of(self, generated: str) -> str | None:
        """The one label that text generated so far can still become, if only one can:
        the small model may stop there (its first tokens usually decide the label, and
        on CPU every further token costs ~12 ms)."""
        got = words(generated)
        if not got:
            return None
        found = None
        for label in self._labels:
            want = label.split()
            if len(got) <= len(want) and got[:-1] == want[:len(got) - 1] \
                    and want[len(got) - 1].startswith(got[-1]):
                if found is not None:
                    return None
                found = label
        return found

    def resolve(self, label: str) -> str | None:
        """Strategy id for a label the small model generated (tolerates small slips)."""
        target = " ".join(words(label))
        if not target:
            return None
        exact = [s.id for s in self._by_id.values() if s.label == target] \
            if target in self._labels else []
        if exact:
            return exact[0]
        best, best_sim = None, 0.5
        for s in self._by_id.values():
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
            cat._order[s.id] = len(cat._order)
            cat._by_id[s.id] = s
            cat._labels.add(s.label)
            cat._index(s.id, set(content_words(s.text)))
            cat._exact[" ".join(words(s.text))] = s.id
        return cat


HINT_PREFIX = "Approach that has worked best for similar tasks — follow it: "


def hint_text(strategy: Strategy) -> str:
    """What the big model is told. It quotes how a successful answer described its
    approach, so the strategy is named in the model's own words."""
    return f"{HINT_PREFIX}\"{strategy.text}\""


def hinted_sentence(text: str | None) -> str | None:
    """The approach sentence a recorded ``hint_text`` quoted, or None."""
    if not text or not text.startswith(HINT_PREFIX):
        return None
    quoted = text[len(HINT_PREFIX):]
    return quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == '"' else None
