"""Memory of past tasks by meaning: the small model's embeddings, centred.

Every embedding of a decoder model shares one large common direction, so raw cosines
are all high and say little; subtracting the mean of the embeddings seen so far leaves
what sets one task apart from the traffic around it. The mean is the running mean at the
time a task is stored (a vector is centred once, like the word vectors are hashed once),
and a query is centred by the current one. So the first few tasks are centred on a
mean of few (the very first on itself: it never matches); exact centring at query time
would cost a second pass over the matrix for a few tasks at start-up, and the replays
that chose these settings measured it this way. Vectors are stored in a ``TaskMemory``, so
outcomes, episodes and eviction work as for the word memory.
"""

from __future__ import annotations

import threading

import numpy as np

from proxy.hints.evidence import Observation
from proxy.hints.memory import TaskMemory
from proxy.hints.text import Vector


class MeaningMemory:
    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.capacity = capacity
        self._memory = TaskMemory(dim=dim, capacity=capacity)
        self._sum = np.zeros(dim, dtype=np.float64)
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def seq(self) -> int:
        return self._memory.seq

    def add(self, request_id: str, episode_id: str, raw: Vector, sid: str) -> None:
        if len(raw) != self.dim:
            raise ValueError(f"embedding has {len(raw)} dimensions, memory {self.dim}")
        with self._lock:
            self._sum += raw
            self._count += 1
            centred = self._centre(raw)
        self._memory.add(request_id, episode_id, centred, sid)

    def set_outcome(self, request_id: str | None, episode_id: str | None,
                    value: float) -> None:
        self._memory.set_outcome(request_id, episode_id, value)

    def neighbours(self, raw: Vector, k: int, min_similarity: float,
                   renames: dict[str, str] | None = None) -> list[Observation]:
        with self._lock:
            if self._count == 0 or len(raw) != self.dim:
                return []
            centred = self._centre(raw)
        return self._memory.neighbours(centred, k, min_similarity, renames)

    def _centre(self, raw: Vector) -> Vector:
        vec = (raw - self._sum / self._count).astype(np.float32)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec
