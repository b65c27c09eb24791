"""Phrasings of one approach, learned from what the big model does with a hint.

Told to follow an approach, a big model describes it in its own words, not always the
ones the hint quoted: "I used constraint propagation: ..." one time, "Approach:
propagate the constraints, ..." the next. Word overlap cannot group those, and kept
apart they split one approach's evidence in two. So the catalog also watches guided
calls: which strategy was hinted, which one the answer used. Two strategies are one
approach when each one's hint makes the big model answer with the other often.

Requiring it *both ways* is what keeps a popular approach from swallowing the others:
a model that ignores hints answers with its favourite whatever the hint says, so the
favourite often follows any hint, but under the favourite's own hint the others almost
never appear. (For two different approaches to pass both ways, the model would have to
ignore most hints and favour both: at a compliance above 0.2 it cannot, in expectation.)
The counts are kept, not the verdict: a pair that stops qualifying comes apart again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

ALIAS_SHARE = 0.2  # each must answer the other's hint at least this often
ALIAS_MIN_PAIRS = 3  # and at least this many times


class Aliases:
    def __init__(self) -> None:
        self._hinted: Counter[str] = Counter()  # hints given, per strategy
        self._pairs: Counter[tuple[str, str]] = Counter()  # (hinted, used), hinted != used
        # Unordered pairs seen often enough both ways to be linked: the only ones worth
        # checking again, so a recount stays cheap however many strategies there are.
        self._candidates: set[tuple[str, str]] = set()
        self._roots: dict[str, str] | None = {}  # None: recompute from the counts

    def observe(self, hinted: str, used: str) -> None:
        """A guided call hinted ``hinted`` and its answer used ``used``."""
        self._hinted[hinted] += 1
        if used != hinted:
            self._pairs[(hinted, used)] += 1
            if min(self._pairs[(hinted, used)], self._pairs[(used, hinted)]) >= ALIAS_MIN_PAIRS:
                self._candidates.add((min(hinted, used), max(hinted, used)))
        if self._candidates:
            self._roots = None

    def roots(self, order: Callable[[str], int]) -> dict[str, str]:
        """Strategy id → the id that stands for its group, for the other members of a
        group only (read-only: it is cached until the next observation). A group
        is named after its member that ``order`` puts first (the catalog passes first
        sighting, so a group keeps its name as it grows)."""
        if self._roots is None:
            self._roots = self._components(order)
        return self._roots

    def _linked(self, a: str, b: str) -> bool:
        ab, ba = self._pairs[(a, b)], self._pairs[(b, a)]
        return (min(ab, ba) >= ALIAS_MIN_PAIRS
                and ab >= ALIAS_SHARE * self._hinted[a]
                and ba >= ALIAS_SHARE * self._hinted[b])

    def _components(self, order: Callable[[str], int]) -> dict[str, str]:
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        for a, b in sorted(self._candidates):
            if self._linked(a, b):
                ra, rb = find(a), find(b)
                if ra != rb:
                    keep, drop = sorted((ra, rb), key=order)
                    parent[drop] = keep
        return {x: find(x) for x in parent}
