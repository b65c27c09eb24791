"""Labelled episodes for the small model: task text → label of the best-evidenced strategy.

Each episode is one task. The strategy it used is recovered from its first answer
(``StrategyCatalog.assign``); its outcome is the episode's outcome, else its call's.
The *target* of an episode is not the strategy it used but the strategy with the best
recency-weighted evidence among it and its similar episodes, computed with the same
``evidence`` code the hint engine uses. So failures teach too (they lower a strategy's
evidence), and old episodes are relabelled with what works *now*, which lets the model
follow drift while every kind of task ever seen stays in the training set (replay).

Held-out episodes (by a hash of their id) never inform the training labels, and the
retrieval-alone baseline only ever sees training episodes.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from learner.pace import proxy_url
from learner.train import Example
from proxy.config import Config
from proxy.hints import evidence
from proxy.hints.evidence import Observation
from proxy.hints.prompt import END_OF_TURN, render
from proxy.hints.strategies import StrategyCatalog
from proxy.hints.text import Vectorizer
from proxy.store import Store, StoreLocked, open_for_reading

GUIDED_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
HELDOUT_FRACTION = 0.15
REPLAY_MAX = 200
VECTOR_DIM = 512  # the hint engine's dimension, so "similar" means the same in both
# Among equally similar tasks prefer newer ones, so evidence follows drift.
RECENCY_TIE_BREAK = 1e-4
CHUNK_ROWS = 1024
MIN_WEIGHT = 0.2
SNAPSHOT_TIMEOUT_S = 300.0
Split = Literal["train", "heldout"]

_EPISODES_SQL = """
WITH c AS (
    SELECT c.request_id, c.episode_id, c.started_at, c.task_text,
           left(c.response_text, 4000) AS response_text, c.hint_text,
           o.success, o.score, o.outcome_level,
           row_number() OVER (PARTITION BY c.episode_id
                              ORDER BY c.started_at, c.request_id) AS pos
    FROM calls c JOIN call_outcomes o ON o.request_id = c.request_id
    WHERE c.status = 200 AND c.endpoint IN ({endpoints})
      AND trim(coalesce(c.task_text, '')) <> ''
      AND trim(coalesce(c.response_text, '')) <> ''
)
SELECT episode_id,
       first(started_at ORDER BY pos) AS started_at,
       first(task_text ORDER BY pos) AS task_text,
       first(response_text ORDER BY pos) AS response_text,
       first(hint_text ORDER BY pos) AS hint_text,
       first({{'success': success, 'score': score}} ORDER BY pos)
           FILTER (WHERE outcome_level = 'episode') AS episode_outcome,
       first({{'success': success, 'score': score}} ORDER BY pos)
           FILTER (WHERE outcome_level = 'call') AS call_outcome,
       count(*) AS calls
FROM c GROUP BY episode_id
ORDER BY started_at, episode_id
"""


@dataclass(frozen=True)
class Episode:
    episode_id: str
    started_at: datetime
    task: str
    sid: str  # the strategy its first answer used
    outcome: float  # 1.0 success, 0.0 failure, or a score in between


@dataclass(frozen=True)
class Labeled:
    episode: Episode
    split: Split
    target: str  # strategy id the model should name
    label: str
    weight: float
    retrieved: str | None  # best evidence from training neighbours alone


@dataclass
class Dataset:
    train: list[Example]
    heldout: list[Example]
    replay: list[Example]
    catalog: StrategyCatalog
    stats: dict[str, Any]
    # Aligned one to one with the example lists above (the gate needs tasks and ids).
    train_items: list[Labeled] = field(default_factory=list)
    heldout_items: list[Labeled] = field(default_factory=list)
    replay_items: list[Labeled] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return len(self.train) + len(self.heldout)


def example(item: Labeled) -> Example:
    return Example(render(item.episode.task), item.label + END_OF_TURN, item.weight)


# -- reading ---------------------------------------------------------------------------
def request_snapshot(config: Config) -> Path:
    """Ask the running proxy for a consistent read-only copy of its store."""
    import httpx  # noqa: PLC0415 - only needed while a proxy runs

    headers = {"authorization": f"Bearer {config.admin.token}"} if config.admin.token else {}
    url = proxy_url(config, "/v1/tactician/snapshot")
    try:
        resp = httpx.post(url, headers=headers, timeout=SNAPSHOT_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"store is locked by a proxy but {url} is unreachable: {exc}") from exc
    if resp.status_code != 200:
        raise RuntimeError(f"snapshot request failed: HTTP {resp.status_code} {resp.text[:200]}")
    return Path(resp.json()["path"])


@contextmanager
def open_store(config: Config) -> Iterator[tuple[Store | None, str]]:
    """The store read-only, or a snapshot of it while a proxy holds it; None if absent."""
    path = config.store_path
    if not path.exists():
        yield None, "none"
        return
    snapshot: Path | None = None
    try:
        store = open_for_reading(path)
        source = "store"
    except StoreLocked:
        snapshot = request_snapshot(config)
        store = Store(snapshot, read_only=True)
        source = "snapshot"
    try:
        yield store, source
    finally:
        store.close()
        if snapshot is not None:
            # The copy is ours alone: nobody else reads it once we are done.
            for leftover in (snapshot, snapshot.with_name(snapshot.name + ".wal")):
                leftover.unlink(missing_ok=True)


def _outcome_value(outcome: dict[str, Any] | None) -> float | None:
    """Same rule as the hint engine: success when given, else the score in [0, 1]."""
    if not outcome:
        return None
    if outcome.get("success") is not None:
        return 1.0 if outcome["success"] else 0.0
    score = outcome.get("score")
    if score is None or math.isnan(float(score)):
        return None
    return min(1.0, max(0.0, float(score)))


def load_episodes(store: Store, catalog: StrategyCatalog) -> tuple[list[Episode], dict[str, int]]:
    """Episodes with an outcome and a recognisable approach, oldest first. The catalog
    grows in time order, so a strategy keeps the id and label of its first sighting; it
    also learns from the hints which phrasings are one approach, as the hint engine
    does, and each episode counts for its approach's group."""
    endpoints = ", ".join(f"'{e}'" for e in GUIDED_ENDPOINTS)
    rows = store.query(_EPISODES_SQL.format(endpoints=endpoints))
    counts = {"episodes_seen": len(rows), "calls": 0, "no_outcome": 0, "no_approach": 0}
    episodes: list[Episode] = []
    for row in rows:
        counts["calls"] += int(row["calls"])
        value = _outcome_value(row["episode_outcome"])
        if value is None:
            value = _outcome_value(row["call_outcome"])
        sid = catalog.assign(row["response_text"])
        catalog.observe_recorded_hint(row["hint_text"], sid)
        if value is None:
            counts["no_outcome"] += 1
        elif sid is None:
            counts["no_approach"] += 1
        else:
            episodes.append(
                Episode(str(row["episode_id"]), row["started_at"], str(row["task_text"]),
                        sid, value)
            )
    renames = catalog.renames()
    episodes = [replace(e, sid=renames.get(e.sid, e.sid)) for e in episodes]
    return episodes, counts


# -- labelling -------------------------------------------------------------------------
def _unit(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(episode_id: str) -> Split:
    return "heldout" if _unit(episode_id, "heldout") < HELDOUT_FRACTION else "train"


@dataclass(frozen=True)
class Neighbours:
    """Top-k similar episodes of one episode, most similar first (itself excluded)."""

    all_idx: npt.NDArray[np.int64]
    all_sim: npt.NDArray[np.float32]
    train_idx: npt.NDArray[np.int64]
    train_sim: npt.NDArray[np.float32]


def _top_rows(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Column indices of each row's k best scores, best first."""
    k = max(1, min(k, scores.shape[1]))
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def find_neighbours(
    vectors: npt.NDArray[np.float32], is_train: npt.NDArray[np.bool_], k: int,
    min_similarity: float, progress: bool = True,
) -> list[Neighbours]:
    """Exact top-k cosine search in row chunks, O(n²·dim): ~20 s for 20k episodes on
    2 busy cores, mostly the partial sorts."""
    n = vectors.shape[0]
    recency = (RECENCY_TIE_BREAK * np.arange(n) / max(n, 1)).astype(np.float32)
    out: list[Neighbours] = []
    bar = tqdm(total=n, desc="neighbours", disable=not progress or n < 2 * CHUNK_ROWS)
    for lo in range(0, n, CHUNK_ROWS):
        sims = vectors[lo : lo + CHUNK_ROWS] @ vectors.T
        ranked = sims + recency
        rows = np.arange(sims.shape[0])
        ranked[rows, lo + rows] = -np.inf
        # One partial sort serves both searches: the training neighbours are almost
        # always among the best 2k overall (held-out is a small fraction).
        cand = _top_rows(ranked, 2 * k)
        for r in rows:
            real = cand[r][ranked[r][cand[r]] >= min_similarity]
            train = real[is_train[real]][:k]
            if len(train) < k and len(real) == len(cand[r]) < n - 1:
                train = _train_row(ranked[r], is_train, k, min_similarity)
            a = real[:k]
            out.append(Neighbours(a, sims[r][a], train, sims[r][train]))
        bar.update(sims.shape[0])
    bar.close()
    return out


def _train_row(
    ranked: npt.NDArray[np.float32], is_train: npt.NDArray[np.bool_], k: int, floor: float
) -> npt.NDArray[np.int64]:
    only = np.where(is_train, ranked, -np.inf).astype(np.float32)
    top = _top_rows(only[None, :], k)[0]
    picked: npt.NDArray[np.int64] = top[only[top] >= floor]
    return picked


@dataclass(frozen=True)
class EvidenceSettings:
    k: int
    min_similarity: float
    min_evidence: int
    half_life: float
    pessimism: float

    @classmethod
    def from_config(cls, config: Config) -> EvidenceSettings:
        g = config.guidance
        return cls(g.similar_k, g.min_similarity, g.min_evidence, g.half_life,
                   g.pessimism)


def _best(
    episodes: list[Episode], idx: npt.NDArray[np.int64], sims: npt.NDArray[np.float32],
    own: int | None, ev: EvidenceSettings,
) -> str | None:
    obs = [Observation(episodes[j].sid, episodes[j].outcome, float(s), int(j))
           for j, s in zip(idx, sims, strict=True)]
    if own is not None:
        obs.append(Observation(episodes[own].sid, episodes[own].outcome, 1.0, own))
    # Age in episodes, as the engine's memory counts it; no optimism bonus: the label
    # to learn is the best-evidenced strategy (so, as in the engine, not the luckiest
    # short record), exploring is the engine's business.
    now = len(episodes) - 1
    stats = evidence.summarize(obs, now, ev.half_life, evidence.change_point(obs))
    top = evidence.best(stats, ev.min_evidence, pessimism=ev.pessimism)
    return top.sid if top is not None else None


def recency_weight(age: int, half_life: float) -> float:
    """Training weight: halves every ``half_life`` episodes down to a floor, so recent
    traffic dominates while a kind of task seen only long ago is still rehearsed."""
    decay = 0.5 ** (age / half_life) if half_life > 0 else 1.0
    return MIN_WEIGHT + (1.0 - MIN_WEIGHT) * decay


def label_episodes(
    episodes: list[Episode], catalog: StrategyCatalog, ev: EvidenceSettings,
    progress: bool = True,
) -> tuple[list[Labeled], int]:
    """(labelled episodes, how many had too little evidence for a target)."""
    vec = Vectorizer(VECTOR_DIM)
    vectors = np.stack([vec.vector(e.task) for e in episodes]).astype(np.float32)
    splits = [split_of(e.episode_id) for e in episodes]
    if "heldout" not in splits and len(splits) > 1:
        # Tiny data: still hold one out, the least "train-like" by hash.
        first = min(range(len(splits)), key=lambda i: _unit(episodes[i].episode_id, "heldout"))
        splits[first] = "heldout"
    is_train = np.array([s == "train" for s in splits])
    neighbours = find_neighbours(vectors, is_train, ev.k, ev.min_similarity, progress)
    items: list[Labeled] = []
    thin = 0
    for i, (ep, split, nb) in enumerate(zip(episodes, splits, neighbours, strict=True)):
        # Held-out targets use all evidence; training targets never see held-out outcomes.
        idx, sims = (nb.all_idx, nb.all_sim) if split == "heldout" else (nb.train_idx,
                                                                         nb.train_sim)
        target = _best(episodes, idx, sims, i, ev)
        strategy = catalog.get(target) if target else None
        if strategy is None:
            thin += 1
            continue
        retrieved = _best(episodes, nb.train_idx, nb.train_sim, None, ev)
        weight = recency_weight(len(episodes) - 1 - i, ev.half_life)
        items.append(Labeled(ep, split, strategy.id, strategy.label, weight, retrieved))
    return items, thin


def _normalized(items: list[Labeled]) -> list[Labeled]:
    """Mean weight 1, so the learning rate means the same whatever the history length."""
    if not items:
        return items
    mean = sum(it.weight for it in items) / len(items)
    return [Labeled(it.episode, it.split, it.target, it.label, it.weight / mean, it.retrieved)
            for it in items]


def replay_sample(train: list[Labeled], limit: int = REPLAY_MAX) -> list[Labeled]:
    """Older half of the training episodes, a deterministic sample: does the new
    adapter still know the kinds of task it learned long ago?"""
    if len(train) < 2:
        return []
    ordered = sorted(train, key=lambda it: (it.episode.started_at, it.episode.episode_id))
    older = ordered[: len(ordered) // 2]
    older.sort(key=lambda it: _unit(it.episode.episode_id, "replay"))
    return sorted(older[:limit], key=lambda it: it.episode.started_at)


def _window(episodes: list[Episode]) -> dict[str, str | None]:
    if not episodes:
        return {"from": None, "to": None}
    return {"from": episodes[0].started_at.isoformat(), "to": episodes[-1].started_at.isoformat()}


def build_dataset(store: Store | None, config: Config, progress: bool = True) -> Dataset:
    started = time.monotonic()
    catalog = StrategyCatalog()
    episodes, counts = load_episodes(store, catalog) if store is not None else ([], {})
    items, thin = (label_episodes(episodes, catalog, EvidenceSettings.from_config(config),
                                  progress) if episodes else ([], 0))
    train = _normalized([it for it in items if it.split == "train"])
    heldout = [it for it in items if it.split == "heldout"]
    replay = replay_sample(train)
    stats: dict[str, Any] = {
        **counts,
        "episodes": len(episodes),
        "thin_evidence": thin,
        "train": len(train),
        "heldout": len(heldout),
        "replay": len(replay),
        "strategies": len(catalog),
        "targets": len({it.target for it in items}),
        "window": _window(episodes),
        "seconds": round(time.monotonic() - started, 3),
    }
    return Dataset(
        train=[example(it) for it in train],
        heldout=[example(it) for it in heldout],
        replay=[example(it) for it in replay],
        catalog=catalog,
        stats=stats,
        train_items=train,
        heldout_items=heldout,
        replay_items=replay,
    )


def load_dataset(config: Config, progress: bool = True) -> Dataset:
    """Read the store (or a snapshot while a proxy runs) and build the dataset."""
    with open_store(config) as (store, source):
        dataset = build_dataset(store, config, progress)
    dataset.stats["source"] = source
    return dataset
