"""Memory of past tasks: what each used and how it went, searchable by similarity.

Held in RAM as a matrix of task vectors, one column per task, so that a query reads
only the rows of the few dimensions its own vector uses (a task's hashed words fill ~30
of 512): a query over 50k tasks took 0.34 ms here, where the whole matrix-vector
product took 3.0 ms, on the event loop of every guided call. Rebuilt from the store at
start-up; fed by every finished call and every outcome. Outcomes may arrive before
their call: they wait in ``_early`` until the call shows up.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from proxy.hints.evidence import Observation
from proxy.hints.text import Vector


@dataclass
class _Slot:
    request_id: str
    episode_id: str
    sid: str
    seq: int
    # The episode's later calls, whose outcomes count for it: forgotten with it.
    later: list[str] = field(default_factory=list)


@dataclass
class TaskMemory:
    dim: int
    capacity: int
    _vectors: np.ndarray = field(init=False)
    _success: np.ndarray = field(init=False)  # per column; NaN until its outcome comes
    _slots: list[_Slot | None] = field(init=False)
    _by_request: dict[str, int] = field(default_factory=dict)
    _by_episode: dict[str, int] = field(default_factory=dict)
    _early: dict[str, float] = field(default_factory=dict)
    _next: int = 0
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._vectors = np.zeros((self.dim, self.capacity), dtype=np.float32)
        self._success = np.full(self.capacity, np.nan)
        self._slots = [None] * self.capacity

    def prefault(self) -> None:
        """Touch the matrix's pages now, off the event loop. The first column written
        faults in a page of every row: with transparent huge pages that is the whole
        matrix (~100 MB at the default size), 150-250 ms the first guided call would
        otherwise wait. Without huge pages it is 512 small pages, and RSS grows only
        as columns fill, as before."""
        with self._lock:
            self._vectors[:, 0] = self._vectors[:, 0].copy()  # a write, whatever it holds

    @property
    def seq(self) -> int:
        """How many tasks the memory has seen: the clock evidence ages by."""
        return self._seq

    def __len__(self) -> int:
        return sum(1 for s in self._slots if s is not None)

    def add(self, request_id: str, episode_id: str, vec: Vector, sid: str) -> None:
        """Remember one episode's task and strategy (later calls of the same episode
        continue the same task, so only the first is kept)."""
        with self._lock:
            if episode_id in self._by_episode:
                idx = self._by_episode[episode_id]
                self._by_request[request_id] = idx
                slot = self._slots[idx]
                if slot is not None:
                    slot.later.append(request_id)
                early = self._early.pop(request_id, math.nan)  # this call's, come first
                if not math.isnan(early):
                    self._success[idx] = early
                return
            idx = self._next
            self._next = (self._next + 1) % self.capacity
            self._evict(idx)
            self._seq += 1
            self._slots[idx] = _Slot(request_id, episode_id, sid, self._seq)
            self._success[idx] = self._early.pop(request_id,
                                                 self._early.pop(episode_id, math.nan))
            self._vectors[:, idx] = vec
            self._by_request[request_id] = idx
            self._by_episode[episode_id] = idx

    def _evict(self, idx: int) -> None:
        old = self._slots[idx]
        if old is None:
            return
        for request_id in (old.request_id, *old.later):
            self._by_request.pop(request_id, None)
        self._by_episode.pop(old.episode_id, None)
        self._slots[idx] = None
        self._success[idx] = math.nan

    def set_outcome(self, request_id: str | None, episode_id: str | None, value: float) -> None:
        """A later outcome for the same target supersedes the earlier one."""
        with self._lock:
            idx = self._by_request.get(request_id or "")
            if idx is None:
                idx = self._by_episode.get(episode_id or "")
            if idx is None:
                if len(self._early) > self.capacity:  # never linked: drop the oldest
                    self._early.pop(next(iter(self._early)))
                self._early[request_id or episode_id or ""] = value
                return
            self._success[idx] = value

    def neighbours(self, vec: Vector, k: int, min_similarity: float,
                   renames: dict[str, str] | None = None) -> list[Observation]:
        """The k most similar past tasks with an outcome; ``renames`` maps a strategy id
        to the one that stands for its group (phrasings of one approach)."""
        renames = renames or {}
        with self._lock:
            # Only the filled columns: the matrix is allocated at full capacity up front.
            filled = min(self._seq, self.capacity)
            used = np.flatnonzero(vec)
            if len(used) == self.dim:  # a dense vector (embeddings): no row gather
                sims = vec @ self._vectors[:, :filled]
            else:
                sims = vec[used] @ self._vectors[used, :filled]
            if len(sims) == 0:
                return []
            # Tasks without an outcome are no evidence: out of the ranking before it, or
            # copies of a task whose outcomes never came fill the candidates and hide
            # the ones that did (20,000 such copies left 15 of 192 found, in 0.6 ms a
            # query; now all, in 0.2 ms).
            success = self._success[:filled]
            sims[np.isnan(success)] = -np.inf
            top = min(len(sims), k)
            candidates = np.argpartition(-sims, top - 1)[:top] if top < len(sims) else \
                np.arange(len(sims))
            order = candidates[np.argsort(-sims[candidates])]
            out: list[Observation] = []
            for idx in order:
                sim = float(sims[idx])
                if sim < min_similarity:
                    break
                slot = self._slots[idx]
                if slot is None:  # evicted, so without an outcome: never ranked this high
                    continue
                out.append(Observation(renames.get(slot.sid, slot.sid), float(success[idx]),
                                       sim, slot.seq))
            return out
