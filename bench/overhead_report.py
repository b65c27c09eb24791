"""The overhead benchmark's report: summaries, added latency, ratios, targets, text.

``python -m bench.overhead_report data/bench/overhead.json`` prints a saved report again.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.loadgen import Run, Sample, summarize

ERROR_ONSET = 0.01  # a ramp step with more failed requests than this is where errors start
SATURATED_P99_MS = 100.0
QUANTILES = ("p50", "p95", "p99")
TARGETS = {"added_p50_ms": 1.0, "added_p99_ms": 5.0, "vs_litellm_p50": 0.2,
           "stream_ttfb_added_p50_ms": 2.0}


def ramp_step(rate: float, run: Run) -> dict[str, Any]:
    s = summarize(run.samples, run.seconds)
    return {"rate": rate, "n": s["n"], "error_rate": round(s["error_rate"], 4),
            "throughput": s.get("throughput"), "p50": s["latency_p50"],
            "p99": s["latency_p99"], "lag_p99": s["lag_p99"]}


def _diff(a: float, b: float) -> float:
    return round(a - b, 3) if not (math.isnan(a) or math.isnan(b)) else math.nan


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def added(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: latency (and TTFB) percentiles minus the direct arm's, and the ratios."""
    direct = results["direct"]
    litellm = results.get("litellm")
    out: dict[str, dict[str, Any]] = {}
    for arm, res in results.items():
        row: dict[str, Any] = {}
        for q in QUANTILES:
            row[f"added_{q}"] = _diff(res[f"latency_{q}"], direct[f"latency_{q}"])
            row[f"ttfb_added_{q}"] = _diff(res[f"ttfb_{q}"], direct[f"ttfb_{q}"])
            row[f"x_direct_{q}"] = _ratio(res[f"latency_{q}"], direct[f"latency_{q}"])
        out[arm] = row
    if litellm is not None:
        for row in out.values():
            for q in QUANTILES:
                row[f"x_litellm_added_{q}"] = _ratio(row[f"added_{q}"],
                                                     out["litellm"][f"added_{q}"])
    return out


def onset(steps: list[dict[str, Any]]) -> dict[str, float | None]:
    errors = next((s["rate"] for s in steps if s["error_rate"] > ERROR_ONSET), None)
    saturated = next((s["rate"] for s in steps if s["p99"] > SATURATED_P99_MS
                      or math.isnan(s["p99"])), None)
    return {"errors_start_at": errors, "p99_over_100ms_at": saturated,
            "highest_rate_tried": steps[-1]["rate"] if steps else None}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked on this run (None: the run lacks the arm)."""
    off = result["added"].get("chat@200", {}).get("off")
    stream = result["added"].get("stream@200", {}).get("off")
    checks: dict[str, Any] = {}
    if off:
        checks["off@200 added p50 <= 1 ms"] = off["added_p50"] <= TARGETS["added_p50_ms"]
        checks["off@200 added p99 <= 5 ms"] = off["added_p99"] <= TARGETS["added_p99_ms"]
        if "x_litellm_added_p50" in off:
            checks["off@200 added <= 0.2x LiteLLM's (p50)"] = \
                off["x_litellm_added_p50"] <= TARGETS["vs_litellm_p50"]
            checks["off@200 added <= 0.2x LiteLLM's (p99)"] = \
                off["x_litellm_added_p99"] <= TARGETS["vs_litellm_p50"]
    if stream:
        checks["off stream@200 TTFB added p50 <= 2 ms"] = \
            stream["ttfb_added_p50"] <= TARGETS["stream_ttfb_added_p50_ms"]
    return checks


def build(samples: dict[str, dict[str, list[Sample]]],
          server_cpu: dict[str, dict[str, list[float]]],
          ramp: dict[str, list[dict[str, Any]]], rss: dict[str, dict[str, float]],
          meta: dict[str, Any]) -> dict[str, Any]:
    results = {key: {arm: summarize(s) for arm, s in arms.items()}
               for key, arms in samples.items()}
    for key, arms in server_cpu.items():
        for arm, (cpu_s, n) in arms.items():
            results[key][arm]["server_cpu_ms_per_request"] = round(1000 * cpu_s / max(n, 1), 3)
    result: dict[str, Any] = {
        **meta,
        "results": results,
        "added": {key: added(res) for key, res in results.items() if "direct" in res},
        "ramp": ramp,
        "onset": {arm: onset(steps) for arm, steps in ramp.items()},
        "rss_mb": rss,
    }
    result["targets"] = targets(result)
    return result


ARM_ORDER = ("direct", "off", "retrieval-hit", "retrieval-miss", "both-hit",
             "both-miss", "litellm")


def _order(arm: str) -> int:
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)


def _f(value: Any, width: int = 8) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.2f}" if isinstance(value, float) else str(value).rjust(width)


def render(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for key, res in result["results"].items():
        stream = key.startswith("stream")
        lines.append(f"\n{key}  (ms; cpu/req: the server's CPU per request, the mock's for "
                     "direct; +: added vs direct; xD: latency / direct's; xL: added / "
                     "LiteLLM's added)")
        cols = ["n", "err%", "cpu/req", "p50", "p95", "p99", "+p50", "+p95", "+p99", "xD p50",
                "xD p99", "xL p50", "xL p99"]
        if stream:
            cols += ["ttfb50", "ttfb99", "+ttfb50", "+ttfb99"]
        lines.append(f"{'arm':<16}" + "".join(c.rjust(9) for c in cols))
        for arm, s in sorted(res.items(), key=lambda kv: _order(kv[0])):
            a = result["added"].get(key, {}).get(arm, {})
            vals = [s["n"], 100 * s["error_rate"], s.get("server_cpu_ms_per_request"),
                    s["latency_p50"], s["latency_p95"],
                    s["latency_p99"], a.get("added_p50"), a.get("added_p95"),
                    a.get("added_p99"), a.get("x_direct_p50"), a.get("x_direct_p99"),
                    a.get("x_litellm_added_p50"),
                    a.get("x_litellm_added_p99")]
            if stream:
                vals += [s["ttfb_p50"], s["ttfb_p99"], a.get("ttfb_added_p50"),
                         a.get("ttfb_added_p99")]
            lines.append(f"{arm:<16}" + "".join(" " + _f(v) for v in vals))
    if result["onset"]:
        lines.append("\nramp (open loop, 2 s timeout): errors >1% start at / p99 > 100 ms at")
        for arm, o in result["onset"].items():
            lines.append(f"  {arm:<16} {o['errors_start_at']} / {o['p99_over_100ms_at']}"
                         f"  (tried up to {o['highest_rate_tried']} req/s)")
    lines.append("\nRSS MB (idle after start / after the run / peak):")
    for target, r in result["rss_mb"].items():
        lines.append(f"  {target:<16} {r.get('idle_mb')} / {r.get('end_mb')} / "
                     f"{r.get('peak_mb')}")
    lines.append(f"\ngenerator: {result['generator_loop']}, CPU share of one core while "
                 f"measuring {result['generator_cpu_share']}")
    for name, ok in result["targets"].items():
        lines.append(f"target {'MET ' if ok else 'MISSED'}  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
