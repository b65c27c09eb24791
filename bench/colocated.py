"""The small model's generation time beside a CPU-heavy neighbour, at what priority.

    python -m bench.colocated [--adapter DIR] [--tasks 40] [--nice 0 10] [--out F]

The nightly learner trains with torch and checks its adapter with llama.cpp on the same
cores the proxy serves from. This times the proxy's own ``SmallModel`` (the proxy's
default threads) generating a hint label for each of ``--tasks`` task texts: alone,
then beside each neighbour process — a torch matmul loop (a training stand-in) or a
second llama.cpp context generating non-stop, on 1 or 2 threads — started at each
``--nice`` value, then alone again. ``--adapter`` is a published version directory
(``adapter.gguf`` + ``catalog.json``, e.g. from a ``bench.learning --keep`` run), so
generation stops early as it does in the proxy; without it the bare model generates
the full label.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.labels import load_version, proxy_small_model
from bench.sim import load_world
from bench.sim.metrics import percentile
from proxy.config import GuidanceConfig
from proxy.hints.llm import SmallModel

REPO = Path(__file__).resolve().parents[1]
WORLD = REPO / "bench/worlds/release-desk.yaml"
TORCH = ("import os, torch; os.nice({nice}); torch.set_num_threads({threads})\n"
         "a = torch.randn(1024, 1024)\n"
         "while True: a = torch.tanh(a @ a)\n")
LLAMA = ("import os; os.nice({nice})\n"
         "from llama_cpp import Llama\n"
         "from proxy.models import default_gguf\n"
         "llm = Llama(model_path=str(default_gguf()), n_ctx=256, n_threads={threads},\n"
         "            n_threads_batch={threads}, verbose=False)\n"
         "while True: llm('Summarise the incident for the on-call engineer.', max_tokens=32)\n")
NEIGHBOURS = {"torch": TORCH, "llama": LLAMA}
SETTLE_S = 6.0  # the neighbour imports and warms up before timing starts


def model_for(adapter: Path | None) -> SmallModel:
    model = proxy_small_model()
    if adapter is None:
        model.load(None, "base", None)
    else:
        load_version(model, adapter)
    return model


def timings(model: SmallModel, tasks: list[str], budget_ms: float) -> dict[str, Any]:
    ms = []
    for task in tasks:
        start = time.perf_counter()
        model.submit(task).result()
        ms.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95),
            "max_ms": max(ms), "over_budget": sum(m > budget_ms for m in ms),
            "tasks": len(ms)}


def beside(kind: str, threads: int, nice: int,
           measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    code = NEIGHBOURS[kind].format(nice=nice, threads=threads)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        time.sleep(SETTLE_S)
        if proc.poll() is not None:
            raise RuntimeError(f"the {kind} neighbour exited with {proc.returncode}")
        return measure()
    finally:
        proc.kill()
        proc.wait()


def run(adapter: Path | None, n_tasks: int, nices: list[int],
        neighbours: list[tuple[str, int]]) -> dict[str, Any]:
    tasks = sorted({t.text for t in load_world(WORLD).stream()})[:n_tasks]
    budget = GuidanceConfig().budget_ms
    model = model_for(adapter)
    try:
        for task in tasks[:3]:  # warm the KV cache of the shared prompt prefix
            model.submit(task).result()
        rows = [{"neighbour": None, **timings(model, tasks, budget)}]
        for nice in nices:
            for kind, threads in neighbours:
                rows.append({"neighbour": f"{kind} x{threads}", "nice": nice,
                             **beside(kind, threads, nice,
                                      lambda: timings(model, tasks, budget))})
        rows.append({"neighbour": None, **timings(model, tasks, budget)})
    finally:
        model.close()
    return {"budget_ms": budget, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.colocated", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=None)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--neighbour", nargs="+", default=["torch:2", "torch:1", "llama:2"],
                        help="KIND:THREADS, KIND torch or llama")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    neighbours = [(k, int(n)) for k, n in (spec.split(":") for spec in args.neighbour)]
    if any(k not in NEIGHBOURS for k, _ in neighbours):
        parser.error(f"--neighbour kinds: {', '.join(NEIGHBOURS)}")
    report = run(args.adapter, args.tasks, args.nice, neighbours)
    report["command"] = "python -m bench.colocated " + " ".join(argv or sys.argv[1:])
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(f"small-model generation, ms (over budget: > {report['budget_ms']:.0f} ms)")
    print(f"{'neighbour':12s} {'nice':>4s} {'p50':>7s} {'p95':>7s} {'max':>8s} {'over':>7s}")
    for r in report["rows"]:
        print(f"{r['neighbour'] or 'none':12s} {r.get('nice', '-')!s:>4s} "
              f"{r['p50_ms']:7.0f} {r['p95_ms']:7.0f} {r['max_ms']:8.0f} "
              f"{r['over_budget']:>3d}/{r['tasks']:<3d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
