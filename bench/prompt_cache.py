"""Does the hint leave the upstream's prompt cache working?

    python -m bench.prompt_cache [--rounds 3] [--block 5] [--rules 24] [--out F]

An agent's system prompt is long and static; providers cache a prompt's prefix (OpenAI
automatically, Anthropic at ``cache_control`` breakpoints) and a local llama.cpp server
keeps the last prompt's KV cache, so a repeated prefix is not evaluated again. Each
task's hint differs, and where it goes decides how much of the prompt stays a repeated
prefix. This sends the same calls (one long system prompt, a different task and hint
each call) to the embedded llama.cpp server that ``proxy/local_model.py`` runs, the
hint placed by the proxy's own ``inject_hint`` with ``guidance.hint_position`` ``end``
and ``start``, in alternating blocks; the first call of each block (a cold cache after
the other placement) is not counted. Only the placement differs between the arms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import openai

from proxy.config import LocalModelConfig
from proxy.local_model import LocalModelServer
from proxy.payloads import inject_hint

Position = Literal["end", "start"]
APPROACHES = ["Reproduce the failure before changing anything.",
              "Roll back to the last good release first.",
              "Page the owning team with the error budget.",
              "Bisect the recent commits against the failing test.",
              "Read the runbook section for this alert.",
              "Check the dashboard for the affected region."]


def system_prompt(rules: int) -> str:
    """A long, static agent prompt: numbered house rules."""
    lines = ["You are the on-call assistant for the platform team. Follow these rules."]
    lines += [f"{i}. Rule {i}: record every action in ticket notes, name the service and "
              f"region affected, and say what you checked before answering."
              for i in range(1, rules + 1)]
    return "\n".join(lines)


def call_seconds(client: openai.OpenAI, model: str, system: str, k: int,
                 position: Position) -> float:
    body: dict[str, Any] = {"messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Service checkout-{k} returns errors in region {k % 7}."}]}
    injected = inject_hint("/v1/chat/completions", body, APPROACHES[k % len(APPROACHES)],
                           position)
    assert injected is not None
    start = time.perf_counter()
    client.chat.completions.create(model=model, messages=injected["messages"],
                                   max_tokens=1, temperature=0.0)
    return time.perf_counter() - start


def measure(client: openai.OpenAI, model: str, system: str, rounds: int,
            block: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"end": [], "start": []}
    k = 0
    for _ in range(rounds):
        for position in ("end", "start"):
            for i in range(block):
                k += 1
                t = call_seconds(client, model, system, k, position)
                if i:  # the block's first call follows the other placement's prompt
                    times[position].append(t)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prompt_cache")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--rules", type=int, default=24, help="length of the system prompt")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    server = LocalModelServer(LocalModelConfig())
    server.start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        model = server.model_path.stem
        system = system_prompt(args.rules)
        tokens = client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": system}],
            max_tokens=1).usage
        times = measure(client, model, system, args.rounds, args.block)
    finally:
        server.stop()
    p50 = {pos: statistics.median(ts) * 1000 for pos, ts in times.items()}
    report = {"system_prompt_tokens": tokens.prompt_tokens if tokens else None,
              "calls_counted": {pos: len(ts) for pos, ts in times.items()},
              "p50_ms": {pos: round(v, 1) for pos, v in p50.items()},
              "max_ms": {pos: round(max(ts) * 1000, 1) for pos, ts in times.items()},
              "start_over_end": round(p50["start"] / p50["end"], 2)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
