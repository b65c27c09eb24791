"""Live uplift: success per arm (guided vs holdout control) with a confidence interval.

Counted per episode (an episode is one task), from the effective outcomes in the store.
An outcome with only a score counts as a success when the score is at least 0.5.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.store import Store

_EPISODES = """
    WITH ep AS (
        SELECT c.episode_id,
               arg_min(c.arm, c.started_at) AS arm,
               arg_min(c.adapter_version, c.started_at) AS adapter_version,
               bool_or(coalesce(o.success, o.score >= 0.5)) AS success
        FROM calls c JOIN call_outcomes o USING (request_id)
        WHERE c.arm IS NOT NULL AND o.outcome_id IS NOT NULL
        GROUP BY c.episode_id
    )
"""


def rate(n: int, wins: int) -> dict[str, Any]:
    """Success rate of n episodes with a normal-approximation 95% CI."""
    p = wins / n if n else None
    half = 1.96 * math.sqrt(p * (1 - p) / n) if n and p is not None else None
    return {"episodes": n, "successes": wins, "success_rate": p,
            "ci95": [max(0.0, p - half), min(1.0, p + half)]
            if p is not None and half is not None else None}


def uplift(guided: tuple[int, int], control: tuple[int, int]) -> dict[str, Any]:
    """Relative uplift (pg - pc) / pc with a 95% CI from the delta method on log(pg/pc)."""
    (ng, wg), (nc, wc) = guided, control
    if not ng or not nc or not wc or not wg:
        return {"uplift": None, "ci95": None}
    pg, pc = wg / ng, wc / nc
    se = math.sqrt((1 - pg) / (ng * pg) + (1 - pc) / (nc * pc))
    ratio = math.log(pg / pc)
    return {"uplift": pg / pc - 1,
            "ci95": [math.exp(ratio - 1.96 * se) - 1, math.exp(ratio + 1.96 * se) - 1]}


def arm_stats(store: Store) -> dict[str, Any]:
    rows = store.query(
        _EPISODES + """SELECT arm, count(*) AS n, sum(success::INT) AS wins
                       FROM ep GROUP BY arm"""
    )
    arms = {r["arm"]: (int(r["n"]), int(r["wins"] or 0)) for r in rows}
    by_version = store.query(
        _EPISODES + """SELECT arm, coalesce(adapter_version, 'none') AS version,
                              count(*) AS n, sum(success::INT) AS wins
                       FROM ep GROUP BY ALL ORDER BY version, arm"""
    )
    guided, control = arms.get("guided", (0, 0)), arms.get("control", (0, 0))
    return {
        "arms": {arm: rate(*v) for arm, v in arms.items()},
        "uplift": uplift(guided, control),
        "by_adapter_version": [
            {"arm": r["arm"], "adapter_version": r["version"],
             **rate(int(r["n"]), int(r["wins"] or 0))} for r in by_version
        ],
    }
