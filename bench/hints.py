"""Hint latency added to a call, over a realistic task stream, split by where the hint
came from (memory, the small model on a cache miss, its cache, skipped).

    python -m bench.hints [--world FILE] [--tasks 600] [--learner-after 240] [--out F]

Two real proxies (``python -m proxy``) run side by side against the simulated model:
guidance off and guidance on. Each task goes to both, alternately first, so the
machine's noise hits both alike; the added latency of a call is its client-side time
through the guided proxy minus the same task's time through the unguided one. After
``--learner-after`` tasks the learner trains an adapter, so later thin-evidence tasks
exercise the small model for real.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import openai

from bench.harness.processes import ProxyProcess, arm_guidance, last_line, run_learner, tail
from bench.sim import OFFICE_OPS, load_world
from bench.sim.metrics import percentile
from bench.sim.server import SimServer
from proxy.store import open_for_reading

DEFAULT_WORLD = OFFICE_OPS


def timed_call(client: openai.OpenAI, system: str | None, text: str) -> tuple[float, str]:
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    start = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(model="sim", messages=messages)
    raw.parse()
    return (time.perf_counter() - start) * 1000, raw.headers["x-request-id"]


def run(world_path: Path, tasks: int, learner_after: int, workdir: Path) -> dict[str, Any]:
    world = load_world(world_path)
    added: dict[str, float] = {}
    with SimServer(world) as server, \
            ProxyProcess(workdir / "control", server.base_url, arm_guidance(None)) as control, \
            ProxyProcess(workdir / "guided", server.base_url, arm_guidance("both")) as guided:
        clients = {name: openai.OpenAI(base_url=p.base_url, api_key="k", max_retries=0)
                   for name, p in (("control", control), ("guided", guided))}
        single = [t for t in server.tasks if t.turns == 1][:tasks]
        learner: dict[str, Any] = {}
        for n, task in enumerate(single):
            if n == learner_after:
                guided.drain()
                log = workdir / "learner.log"
                status, code, secs = run_learner(guided.config_path, log, 1800)
                learner = {"status": status, "exit": code, "seconds": round(secs, 1),
                           "last_line": last_line(tail(log))}
            order = ("control", "guided") if n % 2 else ("guided", "control")
            ms: dict[str, float] = {}
            ids: dict[str, str] = {}
            for name in order:
                server.register(task.index)
                ms[name], ids[name] = timed_call(clients[name], world.agent_system_prompt,
                                                 task.text)
                proxy = guided if name == "guided" else control
                proxy.post_outcome("request_id", ids[name], server.outcome(task.index))
            added[ids["guided"]] = ms["guided"] - ms["control"]
        guided.drain()
        snap = guided.snapshot()
    return summarize(added, snap, learner, tasks)


def summarize(added: dict[str, float], snapshot: Path, learner: dict[str, Any],
              tasks: int) -> dict[str, Any]:
    store = open_for_reading(snapshot)
    rows = store.query("SELECT request_id, hint_source, hint_skip_reason, hint_latency_ms "
                       "FROM calls WHERE endpoint = '/v1/chat/completions'")
    store.close()
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row["request_id"] not in added:
            continue
        kind = row["hint_source"] or f"skipped:{row['hint_skip_reason']}"
        groups[kind].append((added[row["request_id"]], row["hint_latency_ms"] or 0.0))
        groups["all"].append(groups[kind][-1])
    return {
        "tasks": tasks,
        "learner": learner,
        "groups": {kind: {
            "calls": len(pairs),
            "added_ms_p50": percentile([a for a, _ in pairs], 0.5),
            "added_ms_p95": percentile([a for a, _ in pairs], 0.95),
            "engine_ms_p50": percentile([h for _, h in pairs], 0.5),
            "engine_ms_p95": percentile([h for _, h in pairs], 0.95),
        } for kind, pairs in sorted(groups.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=DEFAULT_WORLD)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--learner-after", type=int, default=240)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tactician-hints-") as tmp:
        report = run(args.world, args.tasks, args.learner_after, Path(tmp))
    report["command"] = "python -m bench.hints " + " ".join(argv or sys.argv[1:])
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    print(f"{'group':28s} {'calls':>6s} {'added p50':>10s} {'added p95':>10s} "
          f"{'engine p50':>11s} {'engine p95':>11s}")
    for kind, g in report["groups"].items():
        print(f"{kind:28s} {g['calls']:6d} " + " ".join(
            f"{g[k]:10.1f}" if g[k] is not None else f"{'-':>10s}"
            for k in ("added_ms_p50", "added_ms_p95", "engine_ms_p50", "engine_ms_p95")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
