"""A synthetic store at scale: many guided/control episodes with outcomes, spread over
30 days, written through ``Store.insert`` in batches (the recorder's own path)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.store import Store

STRATEGIES = [f"s{i} method" for i in range(8)]
REASONS = ["thin_evidence", "budget", "model_busy"]
SPAN = timedelta(days=30)


def _call(rng: random.Random, i: int, episode: int, arm: str, t: datetime,
          version: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": f"r{i:08d}", "episode_id": f"e{episode:08d}", "started_at": t,
        "finished_at": t, "endpoint": "/v1/chat/completions", "model": "m", "status": 200,
        "upstream_ms": 880 + rng.random() * 400,
        "task_text": f"task kind {episode % 50} number {episode}", "arm": arm,
    }
    row["latency_ms"] = row["upstream_ms"] + 2 + rng.random() * 3
    if arm == "control":
        row["hint_skip_reason"] = "holdout"
        return row
    row["hint_latency_ms"] = rng.random() * 20
    row["latency_ms"] += row["hint_latency_ms"]
    if rng.random() < 0.15:
        row["hint_skip_reason"] = rng.choice(REASONS)
        return row
    strategy = STRATEGIES[episode % len(STRATEGIES)]
    row.update(hint_strategy=strategy, hint_text=f"Approach: use the {strategy}.",
               hint_source=rng.choice(["retrieval", "model", "episode"]),
               adapter_version=version,
               hint_stats='{"summary": "3 of 4 similar tasks", "strategies": {}}')
    return row


def build(store: Store, calls: int, *, batch: int = 50_000, seed: int = 0) -> None:
    """``calls`` calls, two per episode; 10 % control; an episode outcome for 80 %."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - SPAN
    step = SPAN / calls
    rows: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for i in range(calls):
        episode = i // 2
        arm = "control" if (episode * 7919) % 10 == 0 else "guided"
        t = start + step * i
        version = f"v{1 + 5 * i // calls:06d}"
        rows.append(_call(rng, i, episode, arm, t, version))
        if i % 2 and rng.random() < 0.8:
            p = 0.45 if arm == "control" else 0.5 + 0.1 * (i / calls)
            outcomes.append({"outcome_id": f"o{episode:08d}", "received_at": t,
                             "episode_id": f"e{episode:08d}", "success": rng.random() < p})
        if len(rows) >= batch:
            store.insert("calls", rows)
            store.insert("outcomes", outcomes)
            rows, outcomes = [], []
    store.insert("calls", rows)
    store.insert("outcomes", outcomes)
