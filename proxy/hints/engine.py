"""The hint engine: decides whether and what to hint, within a latency budget.

For each guided call: find similar past tasks and their outcomes per strategy (memory);
when that evidence is strong, name the approach it shows working best, or none where
nothing known works well enough (``recommend.py``); when it is thin — a new kind of
task — look for tasks alike in meaning (the small model's embeddings, ``embedder.py``)
and, failing that, ask the small model (LoRA-trained on past outcomes) which approach
fits. Where it is firm but weak (nothing works, or the best works barely half the
time), the tasks alike in meaning may challenge it with an approach little tried here.
Everything it does is recorded on the call, and any failure leaves the call unguided:
the engine fails open.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from proxy.calls import Call
from proxy.config import Config
from proxy.hints.adapters import AdapterWatcher
from proxy.hints.embedder import BACKGROUND, RELOAD, URGENT, Embedder
from proxy.hints.lag import LagGate
from proxy.hints.llm import SmallModel
from proxy.hints.lru import LRU
from proxy.hints.recommend import Recommendation, Recommender
from proxy.hints.strategies import Strategy, StrategyCatalog, hint_text
from proxy.hints.text import Vector, normalize
from proxy.models import small_model_weights
from proxy.recorder import Recorder
from proxy.store import Store

log = logging.getLogger("tactician.hints")

MAX_MODEL_BACKLOG = 2  # beyond this, a new request would only wait: skip instead
# Finished calls waiting for their embedding (~50 ms each on 2 cores): a burst faster
# than that is caught up with later, up to 3-4 minutes behind; beyond, memory by meaning
# skips some (it is a sample, not a record) rather than fall ever further behind the traffic.
MAX_EMBED_BACKLOG = 4096


class HintEngine:
    def __init__(self, config: Config, store: Store, recorder: Recorder) -> None:
        self.cfg = config.guidance
        self.config = config
        self.store = store
        self.recorder = recorder
        self.recommender = Recommender(self.cfg)
        self.model: SmallModel | None = None
        self.embedder: Embedder | None = None
        self.watcher: AdapterWatcher | None = None
        # The small model's contexts take turns, and wait while serving runs late.
        self.gate = LagGate(self.cfg.yield_lag_ms)
        self._gate_task: asyncio.Task[None] | None = None
        # Labels are cached by the worker thread's callback and read on the event loop.
        self._labels: LRU[str, tuple[str, str]] = LRU(config.guidance.cache_size)
        self._labels_lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        # Every call of an episode gets the same hint: it is one task, one approach.
        self._episodes: LRU[str, Strategy] = LRU(config.guidance.cache_size)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.recommender.memory.prefault)
        weights = None
        if self.cfg.mode != "retrieval":
            # Labels and embeddings come from one file, mapped once, the one the learner
            # checks its adapters on; its float16 copy is written once (~1 s).
            weights = await asyncio.to_thread(small_model_weights, self.config)
        if weights is not None and self.cfg.yield_lag_ms > 0:
            self._gate_task = asyncio.create_task(self.gate.watch(), name="lag-gate")
        if weights is not None and self.cfg.mode == "both" and self.cfg.meaning:
            await self._start_embedder(weights)
        await asyncio.to_thread(self._load_history)
        if weights is None:
            return
        self.model = SmallModel(weights, threads=self.cfg.threads,
                                batch_threads=self.cfg.batch_threads,
                                max_tokens=self.cfg.max_hint_tokens, gate=self.gate)
        self.watcher = AdapterWatcher(self.config.state_dir, self.model,
                                      poll_s=self.cfg.adapter_poll_ms / 1000)
        self.watcher.start()

    async def _start_embedder(self, path: Path) -> None:
        embedder = Embedder.for_guidance(path, self.cfg, cache_size=self.cfg.cache_size,
                                         gate=self.gate)
        try:
            dim = await asyncio.to_thread(embedder.load)
        except Exception:  # a missing or broken llama_cpp or model file, ...
            # Fail open: memory by words and the small model's labels still work.
            log.exception("embeddings unavailable: no memory by meaning")
            await asyncio.to_thread(embedder.close)
            return
        self.embedder = embedder
        self.recommender.use_meaning(dim)

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.gate.stop()  # workers waiting on it finish, so they can be shut down
        if self._gate_task is not None:
            self._gate_task.cancel()
        if self.embedder is not None:
            await asyncio.to_thread(self.embedder.close)
        if self.model is not None:
            await asyncio.to_thread(self.model.close)

    def _load_history(self) -> None:
        """Rebuild memory from the store, oldest first, so recency order holds."""
        rows = self.store.query(
            """SELECT c.request_id, c.episode_id, c.task_text, c.response_text,
                      c.hint_text, o.success, o.score
               FROM calls c LEFT JOIN call_outcomes o USING (request_id)
               WHERE c.task_text IS NOT NULL AND c.response_text IS NOT NULL
                 AND c.status = 200
               ORDER BY c.started_at DESC LIMIT ?""",
            [self.cfg.memory_size],
        )
        rec = self.recommender
        # Only the most recent calls that memory by meaning keeps are embedded again,
        # at the lowest priority (minutes of work), each outcome going in with its vector.
        embed_from = len(rows) - rec.meaning.capacity if rec.meaning is not None else 0
        for i, row in enumerate(reversed(rows)):
            value = _outcome_value(row["success"], row["score"])
            self._observe(row["request_id"], row["episode_id"], row["task_text"],
                          row["response_text"], row["hint_text"],
                          RELOAD if i >= embed_from else None, value)
            if value is not None:
                rec.observe_outcome(row["request_id"], None, value, meaning=False)
        log.info("hint memory: %d tasks, %d strategies", len(rec.memory), len(rec.catalog))

    # -- observations --------------------------------------------------------------
    def observe_call(self, row: dict[str, Any]) -> None:
        if row.get("status") != 200 or not row.get("task_text"):
            return
        self._observe(row["request_id"], row["episode_id"], row["task_text"],
                      row.get("response_text"), row.get("hint_text"))

    def _observe(self, request_id: str, episode_id: str, task: str, response: str | None,
                 hint: str | None, embed: int | None = BACKGROUND,
                 outcome: float | None = None) -> None:
        """Into memory by words now; into memory by meaning once embedded at priority
        ``embed`` (None: not at all), with ``outcome`` when it is already known."""
        rec = self.recommender
        sid = rec.observe_call(request_id, episode_id, task, response, hint)
        embedder = self.embedder
        if sid is None or embedder is None or embed is None:
            return
        if embed == BACKGROUND and embedder.pending(BACKGROUND) >= MAX_EMBED_BACKLOG:
            self.counters["meaning:dropped"] += 1
            return

        def store(future: Future[Vector]) -> None:
            if not future.cancelled() and future.exception() is None:
                rec.observe_meaning(request_id, episode_id, future.result(), sid, outcome)

        embedder.submit(task, embed).add_done_callback(store)

    def observe_outcome(self, row: dict[str, Any]) -> None:
        value = _outcome_value(row.get("success"), row.get("score"))
        if value is not None:
            self.recommender.observe_outcome(row.get("request_id"), row.get("episode_id"),
                                             value)

    # -- advice --------------------------------------------------------------------
    async def advise(self, call: Call) -> str | None:
        start = time.perf_counter()
        g = call.guidance
        g["arm"] = self._arm(call.episode_id)
        if g["arm"] == "control":
            g["hint_skip_reason"] = "holdout"
            return None
        in_force = self._adapter_in_force()
        if in_force is not None:
            # Per-version success compares the periods each adapter served, so every
            # guided call carries it, also those memory answers without asking it.
            g["adapter_version"] = in_force
        try:
            strategy = self._episodes.get(call.episode_id)
            if strategy is not None:
                g["hint_source"] = "episode"
            else:
                strategy = await self._choose(call, start)
        except Exception:
            log.exception("hint engine failed")
            g["hint_skip_reason"] = "engine_error"
            strategy = None
        g["hint_latency_ms"] = (time.perf_counter() - start) * 1000
        self.counters["served" if strategy else f"skipped:{g.get('hint_skip_reason')}"] += 1
        if strategy is None:
            return None
        self.counters[f"served:{g.get('hint_source')}"] += 1
        self._episodes.put(call.episode_id, strategy)
        g["hint_strategy"] = strategy.label
        g["hint_text"] = hint_text(strategy)
        return str(g["hint_text"])

    def _adapter_in_force(self) -> str | None:
        """The adapter serving now: none in mode retrieval, which never asks the small
        model, nor before the learner's first adapter."""
        loaded = self.model.current if self.model and self.cfg.mode != "retrieval" else None
        return loaded.version if loaded is not None and loaded.catalog is not None else None

    def _arm(self, episode_id: str) -> str:
        digest = hashlib.sha256(f"{self.cfg.seed}:{episode_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        return "control" if u < self.cfg.holdout else "guided"

    async def _choose(self, call: Call, start: float) -> Strategy | None:
        g = call.guidance
        task = call.task_text
        if not task:
            g["hint_skip_reason"] = "no_task"
            return None
        if self.cfg.mode == "model":
            return await self._from_model(call, task, start)
        rec = self.recommender.recommend(task)
        g["hint_stats"] = rec.stats_json
        if self.cfg.mode == "both" and self.recommender.challengeable(rec):
            challenger = await self._by_meaning(call, task, start, against=rec)
            if challenger is not None:
                return challenger
        if rec.strategy is not None:
            g["hint_source"] = rec.source
            return rec.strategy
        if rec.skip == "low_success" or self.cfg.mode == "retrieval":
            # The model learns memory's best-evidenced choices: where memory has
            # firm evidence that none works, it has nothing better to offer.
            g["hint_skip_reason"] = rec.skip
            return None
        meant = await self._by_meaning(call, task, start)
        if meant is not None:
            return meant
        voted = await self._from_model(call, task, start)
        if voted is None:
            return None
        chosen = self.recommender.with_model_vote(rec, voted)
        if chosen is not voted:
            g["hint_source"] = "model_outvoted"
        return chosen

    async def _by_meaning(self, call: Call, task: str, start: float,
                          against: Recommendation | None = None) -> Strategy | None:
        """Evidence from the tasks nearest in meaning, if the embedding comes in time;
        with ``against``, only as a challenge to that weak answer by words."""
        embedder, meaning = self.embedder, self.recommender.meaning
        if embedder is None or meaning is None:
            return None
        g = call.guidance
        vec = embedder.cached(task)
        if vec is None:
            vec = await self._embed_now(embedder, task, start)
        if vec is None:
            return None
        if against is not None:
            challenger = self.recommender.challenge(against, vec)
            self.counters["meaning:challenge" if challenger else "meaning:unchallenged"] += 1
            if challenger is None:
                return None
            rec = challenger
        else:
            rec = self.recommender.recommend_by_meaning(vec)
        if rec.strategy is None:
            self.counters[f"meaning:{rec.skip}"] += 1
            return None
        g["hint_source"] = rec.source
        g["hint_stats"] = rec.stats_json
        return rec.strategy

    async def _embed_now(self, embedder: Embedder, task: str,
                         start: float) -> Vector | None:
        """The task's embedding within what is left of the budget, else None (it is
        finished in the background all the same, and cached for the call's record)."""
        if embedder.pending(URGENT) >= MAX_MODEL_BACKLOG:
            self.counters["meaning:busy"] += 1
            return None
        if not self.gate.is_open:
            self.counters["meaning:proxy_busy"] += 1
            return None
        remaining = self.cfg.budget_ms / 1000 - (time.perf_counter() - start)
        future = embedder.submit(task, URGENT)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                          max(remaining, 0.001))
        except TimeoutError:
            self.counters["meaning:budget"] += 1
        except asyncio.CancelledError:
            if not future.cancelled():  # the call itself was cancelled
                raise
        except Exception:  # fail open to the small model's label
            log.exception("embedding failed")
        return None

    async def _from_model(self, call: Call, task: str, start: float) -> Strategy | None:
        g = call.guidance
        model = self.model
        loaded = model.current if model else None
        if model is None or loaded is None:
            g["hint_skip_reason"] = "model_unavailable"
            return None
        if loaded.catalog is None:
            g["hint_skip_reason"] = "no_adapter"
            return None
        # The one asked, which may have replaced the one in force when the call came
        # (``advise``) while it waited for its embedding.
        g["adapter_version"] = loaded.version
        task_key = normalize(task)
        with self._labels_lock:
            cached = self._labels.get(f"{loaded.version}:{task_key}")
        if cached is not None:
            g["hint_source"] = "model_cache"
            return self._resolve(call, cached[0], loaded.catalog)
        if model.pending >= MAX_MODEL_BACKLOG:
            g["hint_skip_reason"] = "model_busy"
            return None
        if not self.gate.is_open:
            g["hint_skip_reason"] = "proxy_busy"
            return None
        future = model.submit(task)
        future.add_done_callback(lambda f: self._cache_label(task_key, f))
        remaining = self.cfg.budget_ms / 1000 - (time.perf_counter() - start)
        try:
            label, version = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), max(remaining, 0.001))
        except TimeoutError:
            # Finished in the background and cached for the next similar task.
            g["hint_skip_reason"] = "budget"
            return None
        if version != loaded.version:
            # An adapter swap came between the request and the generation: the label is
            # the new adapter's, which this call's catalog does not describe.
            g["hint_skip_reason"] = "adapter_swapped"
            return None
        g["hint_source"] = "model"
        return self._resolve(call, label, loaded.catalog)

    def _resolve(self, call: Call, label: str, catalog: StrategyCatalog) -> Strategy | None:
        sid = catalog.resolve(label)
        if sid is None:
            call.guidance["hint_skip_reason"] = "model_unresolved"
            return None
        return catalog.get(sid)

    def _cache_label(self, task_key: str, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        label, version = future.result()
        with self._labels_lock:
            # Keyed by the adapter that generated it, which a swap may have changed.
            self._labels.put(f"{version}:{task_key}", (label, version))

    # -- reporting -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        loaded = self.model.current if self.model else None
        return {
            "enabled": True,
            "mode": self.cfg.mode,
            "adapter_version": loaded.version if loaded else None,
            "memory_tasks": len(self.recommender.memory),
            "meaning_tasks": (len(self.recommender.meaning)
                              if self.recommender.meaning is not None else None),
            "strategies": len(self.recommender.catalog),
            "hints": dict(self.counters),
            "watcher": self.watcher.status() if self.watcher else None,
            "yield": self.gate.status(),
        }


def _outcome_value(success: Any, score: Any) -> float | None:
    if success is not None:
        return 1.0 if success else 0.0
    if score is not None:
        return float(score)
    return None
