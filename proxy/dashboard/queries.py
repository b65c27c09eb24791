"""What the dashboard shows, computed in SQL through ``Store.query``.

Everything aggregates in DuckDB and returns small results (time buckets, per-arm and
per-strategy rows), so a page stays fast on a store with millions of calls.

Effective outcomes follow the ``call_outcomes`` view (the latest outcome for the call,
else the latest for its episode, field by field), but are computed here with two
grouped passes over ``outcomes`` and one pass over ``calls``: the view joins ``calls``
twice, which costs about twice as much on a large store. Episode success follows
``proxy.hints.stats.arm_stats`` exactly, so the dashboard, ``/v1/tactician/stats`` and
``/metrics`` agree.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.hints.stats import rate, uplift
from proxy.store import Store

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bucket widths for time series, in seconds: the smallest giving at most MAX_BUCKETS.
BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 48
ALL_TIME_S = 2**40  # one bucket holding every episode
PERCENTILES = (0.5, 0.95, 0.99)


def _outcomes(call_filter: str = "", episode_filter: str = "") -> str:
    """CTEs ``by_call`` and ``by_episode``: the latest outcome per call and per episode.
    The filters (trusted SQL fragments with their own parameters) narrow the scan."""
    latest = "arg_max({'success': success, 'score': score}, (received_at, outcome_id))"
    return f"""
    by_call AS (
        SELECT request_id, {latest} AS o FROM outcomes
        WHERE request_id IS NOT NULL {call_filter} GROUP BY request_id),
    by_episode AS (
        SELECT episode_id, {latest} AS o FROM outcomes
        WHERE request_id IS NULL AND episode_id IS NOT NULL {episode_filter}
        GROUP BY episode_id)"""


_JOIN = """LEFT JOIN by_call bc ON bc.request_id = c.request_id
           LEFT JOIN by_episode be ON be.episode_id = c.episode_id"""
_JUDGED = "(bc.request_id IS NOT NULL OR be.episode_id IS NOT NULL)"
# The call's own outcome wins whole (as in the view ``call_outcomes``).
_CHOSEN = "(CASE WHEN bc.request_id IS NOT NULL THEN bc.o ELSE be.o END)"
_SUCCESS = f"{_CHOSEN}.success"
_SCORE = f"{_CHOSEN}.score"
_OK = f"coalesce({_SUCCESS}, {_SCORE} >= 0.5)"
_LEVEL = "CASE WHEN bc.request_id IS NOT NULL THEN 'call' " \
         "WHEN be.episode_id IS NOT NULL THEN 'episode' END"


def since_of(days: float | None, now: datetime | None = None) -> datetime:
    """The window's start; no ``days`` means all time."""
    if not days:
        return EPOCH
    return (now or datetime.now(UTC)) - timedelta(days=days)


def bucket_seconds(lo: float | None, hi: float | None) -> int:
    span = (hi or 0.0) - (lo or 0.0)
    for width in BUCKETS_S:
        if span / width < MAX_BUCKETS:
            return width
    return BUCKETS_S[-1]


# -- summary ----------------------------------------------------------------------------
def summary(store: Store, since: datetime) -> dict[str, Any]:
    """Arms and uplift, their time series and per-version split, latency percentiles
    and hint decisions for calls started since ``since``."""
    span = store.query(
        "SELECT epoch(min(started_at)) AS lo, epoch(max(started_at)) AS hi FROM calls "
        "WHERE arm IS NOT NULL AND started_at >= ?", [since])[0]
    width = bucket_seconds(span["lo"], span["hi"])
    grid = episode_grid(store, since, width)
    return {
        "since": since,
        **arms(grid),
        "timeline": {"bucket_s": width, "points": timeline(grid)},
        "versions": versions(grid),
        **latency(store, since),
        "hints": hints(store, since),
    }


def overall(store: Store) -> dict[str, Any]:
    """Arms and uplift over all time: what ``arm_stats`` reports, in one pass."""
    return arms(episode_grid(store, EPOCH, ALL_TIME_S))


def episode_grid(store: Store, since: datetime, width: int) -> list[dict[str, Any]]:
    """Judged episodes and successes per (time bucket, arm, adapter version): one pass
    that arms, timeline and versions all fold from."""
    return store.query(
        f"""WITH {_outcomes()},
        ep AS (
            SELECT c.episode_id, arg_min(c.arm, c.started_at) AS arm,
                   min(c.started_at) AS t0,
                   arg_min(c.adapter_version, c.started_at) AS version,
                   bool_or({_OK}) AS success
            FROM calls c {_JOIN}
            WHERE c.arm IS NOT NULL AND c.started_at >= ? AND {_JUDGED}
            GROUP BY c.episode_id)
        SELECT (floor(epoch(t0) / ?) * ?)::BIGINT AS bucket, arm,
               coalesce(version, 'none') AS version,
               count(*) AS n, coalesce(sum(success::INT), 0) AS wins
        FROM ep GROUP BY ALL ORDER BY bucket, arm, version""",
        [since, width, width])


def _totals(rows: list[dict[str, Any]], key: str) -> dict[Any, tuple[int, int]]:
    acc: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        acc[r[key]][0] += int(r["n"])
        acc[r[key]][1] += int(r["wins"])
    return {k: (v[0], v[1]) for k, v in acc.items()}


def arms(grid: list[dict[str, Any]]) -> dict[str, Any]:
    by_arm = _totals(grid, "arm")
    guided, control = by_arm.get("guided", (0, 0)), by_arm.get("control", (0, 0))
    return {"arms": {"guided": rate(*guided), "control": rate(*control)},
            "uplift": uplift(guided, control)}


def timeline(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per bucket: each arm's success rate, and the uplift over everything so far."""
    buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in grid:
        buckets[int(r["bucket"])].append(r)
    cumulative = {"guided": [0, 0], "control": [0, 0]}
    points = []
    for t in sorted(buckets):
        per_arm = _totals(buckets[t], "arm")
        for arm, (n, wins) in per_arm.items():
            cumulative.setdefault(arm, [0, 0])
            cumulative[arm][0] += n
            cumulative[arm][1] += wins
        g, c = cumulative["guided"], cumulative["control"]
        points.append({
            "t": t,
            "guided": rate(*per_arm.get("guided", (0, 0))),
            "control": rate(*per_arm.get("control", (0, 0))),
            "cumulative": uplift((g[0], g[1]), (c[0], c[1])),
        })
    return points


def versions(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Guided success per adapter version ('none': hints not from an adapter)."""
    guided = _totals([r for r in grid if r["arm"] == "guided"], "version")
    return [{"version": v, **rate(*guided[v])} for v in sorted(guided)]


def latency(store: Store, since: datetime) -> dict[str, Any]:
    q = f"{list(PERCENTILES)}"
    row = store.query(
        f"""SELECT count(*) AS calls,
                   quantile_cont(latency_ms, {q}) AS total,
                   quantile_cont(upstream_ms, {q}) AS upstream,
                   quantile_cont(hint_latency_ms, {q}) AS hint,
                   quantile_cont(latency_ms - upstream_ms - coalesce(hint_latency_ms, 0),
                                 {q}) AS overhead,
                   (SELECT count(*) FROM outcomes WHERE received_at >= ?) AS outcomes
            FROM calls WHERE started_at >= ?""", [since, since])[0]
    names = [f"p{round(p * 100)}" for p in PERCENTILES]
    return {
        "totals": {"calls": row["calls"], "outcomes": row["outcomes"]},
        "latency_ms": {k: dict(zip(names, row[k] or [None] * len(names), strict=True))
                       for k in ("overhead", "hint", "upstream", "total")},
    }


def hints(store: Store, since: datetime) -> dict[str, dict[str, int]]:
    """Guided-endpoint calls: served by source, skipped by reason."""
    rows = store.query(
        """SELECT hint_text IS NOT NULL AS served,
                  coalesce(CASE WHEN hint_text IS NOT NULL THEN hint_source
                                ELSE hint_skip_reason END, 'unknown') AS reason,
                  count(*) AS n
           FROM calls WHERE arm IS NOT NULL AND started_at >= ?
           GROUP BY ALL ORDER BY n DESC, reason""", [since])
    out: dict[str, dict[str, int]] = {"served": {}, "skipped": {}}
    for r in rows:
        out["served" if r["served"] else "skipped"][r["reason"]] = int(r["n"])
    return out


# -- what was learned -------------------------------------------------------------------
def strategies(store: Store, since: datetime, limit: int = 20) -> list[dict[str, Any]]:
    """Each recommended strategy: how often, its hint, example tasks it was chosen for,
    the outcomes of those calls and the evidence the engine last saw."""
    rows = store.query(
        f"""WITH {_outcomes()},
        hinted AS (
            SELECT c.hint_strategy, c.hint_text, c.hint_stats, c.started_at,
                   left(c.task_text, 200) AS task, {_JUDGED} AS judged, {_OK} AS ok
            FROM calls c {_JOIN}
            WHERE c.hint_strategy IS NOT NULL AND c.started_at >= ?)
        SELECT hint_strategy AS strategy, count(*) AS calls,
               count(*) FILTER (WHERE judged AND ok) AS successes,
               count(*) FILTER (WHERE judged AND NOT ok) AS failures,
               arg_max(hint_text, started_at) AS hint_text,
               arg_max(hint_stats, started_at) AS evidence,
               max_by(task, started_at, 8) AS examples
        FROM hinted GROUP BY 1 ORDER BY calls DESC, strategy LIMIT ?""", [since, limit])
    for r in rows:
        judged = r["successes"] + r["failures"]
        r["success_rate"] = r["successes"] / judged if judged else None
        r["examples"] = list(dict.fromkeys(t for t in r["examples"] or [] if t))[:3]
        r["evidence"] = _json_or_none(r["evidence"])
    return rows


# -- drill-down ------------------------------------------------------------------------
_CALL_LIST = """c.request_id, c.episode_id, c.started_at, c.endpoint, c.model, c.status,
    c.arm, c.hint_strategy, c.hint_source, c.hint_skip_reason, c.adapter_version,
    c.latency_ms, c.upstream_ms, c.hint_latency_ms"""
_EFFECTIVE = f"{_SUCCESS} AS success, {_SCORE} AS score, {_LEVEL} AS outcome_level"


def recent_calls(store: Store, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    """The latest calls with their hint and effective outcome, newest first."""
    near = "IN (SELECT {0} FROM recent)"
    return store.query(
        f"""WITH recent AS (
                SELECT request_id, episode_id FROM calls
                WHERE started_at < ? ORDER BY started_at DESC LIMIT ?),
        {_outcomes("AND request_id " + near.format("request_id"),
                   "AND episode_id " + near.format("episode_id"))}
        SELECT {_CALL_LIST}, {_EFFECTIVE}
        FROM calls c {_JOIN} WHERE c.request_id IN (SELECT request_id FROM recent)
        ORDER BY c.started_at DESC, c.request_id DESC""",
        [before or datetime.now(UTC) + timedelta(days=1), limit])


def call_detail(store: Store, request_id: str) -> dict[str, Any] | None:
    """One call's full record, its effective outcome and every outcome posted for it
    or its episode."""
    rows = store.query(
        f"""WITH {_outcomes("AND request_id = $1",
                            "AND episode_id = (SELECT episode_id FROM calls "
                            "WHERE request_id = $1 LIMIT 1)")}
        SELECT c.*, {_EFFECTIVE} FROM calls c {_JOIN}
        WHERE c.request_id = $1 LIMIT 1""", [request_id])
    if not rows:
        return None
    call = rows[0]
    call["hint_stats"] = _json_or_none(call["hint_stats"]) or call["hint_stats"]
    history = store.query(
        """SELECT * FROM outcomes WHERE request_id = ?
               OR (request_id IS NULL AND episode_id = ?)
           ORDER BY received_at, outcome_id""", [request_id, call["episode_id"]])
    return {"call": call, "outcomes": history}


def episode_detail(store: Store, episode_id: str) -> dict[str, Any] | None:
    """An episode's calls in order, each with its effective outcome, and its outcomes."""
    calls = store.query(
        f"""WITH {_outcomes("AND request_id IN (SELECT request_id FROM calls "
                            "WHERE episode_id = $1)", "AND episode_id = $1")}
        SELECT {_CALL_LIST}, {_EFFECTIVE}, left(c.task_text, 500) AS task_text,
               c.hint_text
        FROM calls c {_JOIN} WHERE c.episode_id = $1
        ORDER BY c.started_at, c.request_id""", [episode_id])
    if not calls:
        return None
    history = store.query(
        """SELECT * FROM outcomes
           WHERE episode_id = $1
              OR request_id IN (SELECT request_id FROM calls WHERE episode_id = $1)
           ORDER BY received_at, outcome_id""", [episode_id])
    return {"episode_id": episode_id, "calls": calls, "outcomes": history}


def learner_runs(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """Learner runs, oldest first, with the gate's accuracies pulled out of metrics."""
    rows = store.query(
        """SELECT run_id, started_at, finished_at, status, version, decision, reason,
                  metrics
           FROM learner_runs ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT ?""",
        [limit])
    for r in rows:
        metrics = _json_or_none(r["metrics"])
        r["metrics"] = metrics if isinstance(metrics, dict) else {}
        r["accuracy"] = _gate_accuracy(r["metrics"].get("gate"))
    return rows[::-1]


def _gate_accuracy(gate: Any) -> dict[str, float | None]:
    """Held-out accuracy of the new adapter, the serving one and retrieval alone."""
    gate = gate if isinstance(gate, dict) else {}

    def heldout(key: str) -> float | None:
        scores = gate.get(key)
        value = scores.get("heldout") if isinstance(scores, dict) else None
        return float(value) if isinstance(value, int | float) else None

    return {k: heldout(k) for k in ("new", "current", "retrieval")}


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
