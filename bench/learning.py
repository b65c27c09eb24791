"""The learning benchmark: a world's task stream through the real proxy, twice.

``python -m bench.learning --world FILE --out report.json [--plot curves.png]
[--guidance both|retrieval-only|model-only] [--scale 0.5] [--arms both|control|guided]
[--seed N] [--set KEY=VALUE ...]``

The control arm runs the proxy with guidance off; the guided arm with hints on in the
chosen mode and, when that mode uses the small model, ``python -m learner train`` after
each day. Both talk to the simulated model (bench/sim) and are scored from what it saw
(WORLD_SPEC.md). See docs/benchmarks.md, "Learning benchmark".
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.harness.agent import ArmResult, ArmSpec, run_arm
from bench.harness.processes import arm_guidance, guidance_settings
from bench.harness.report import metrics_json, plot, summary_table
from bench.sim import load_world
from bench.sim.metrics import (
    ArmLog,
    Latency,
    Report,
    compute,
    percentile,
    reachable_accuracy,
)
from bench.sim.server import SimServer
from bench.sim.world import World
from proxy.config import load_config
from proxy.errors import ConfigError

MODES = {"both": "both", "retrieval-only": "retrieval", "model-only": "model"}
DEFAULT_LEARNER_TIMEOUT_S = 1800.0
FIXED_KEYS = frozenset({"enabled", "mode", "holdout", "budget_ms"})  # not for --set


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="world YAML (WORLD_SPEC.md)")
    parser.add_argument("--out", type=Path, required=True, help="where to write report.json")
    parser.add_argument("--plot", type=Path, help="PNG of the per-phase curves")
    parser.add_argument("--guidance", choices=sorted(MODES), default="both",
                        help="the guided arm's guidance.mode (default both)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply each phase's request count (days stay)")
    parser.add_argument("--arms", choices=("both", "control", "guided"), default="both")
    parser.add_argument("--learner", choices=("auto", "on", "off"), default="auto",
                        help="nightly learner in the guided arm; auto: unless retrieval-only, "
                             "where the proxy never loads an adapter")
    parser.add_argument("--learner-timeout", type=float, default=DEFAULT_LEARNER_TIMEOUT_S,
                        help="seconds before a nightly job is killed")
    parser.add_argument("--budget-ms", type=float,
                        help="the guided arm's guidance.budget_ms (default: the proxy's); "
                             "a larger one measures the small model's choices where this "
                             "CPU cannot answer within the default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another guidance key for the guided arm, e.g. "
                             "meaning_challenge_below=0 (an ablation)")
    parser.add_argument("--seed", type=int,
                        help="run the world with this seed instead of its own: another "
                             "instance of the same world (bench.replay's seeds)")
    parser.add_argument("--keep", action="store_true", help="keep the arms' stores and logs")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.budget_ms is not None and args.budget_ms <= 0:
        parser.error("--budget-ms must be positive")
    try:
        args.settings = guidance_settings(args.set)
        load_config({"guidance": arm_guidance(MODES[args.guidance], args.budget_ms,
                                              args.settings)})
    except (ValueError, ConfigError) as exc:
        parser.error(f"--set: {exc}")
    if fixed := sorted(FIXED_KEYS & args.settings.keys()):
        parser.error(f"--set {', '.join(fixed)}: set by the benchmark (--guidance, "
                     "--budget-ms; its own control arm needs holdout 0)")
    return args


def scale_world(world: World, scale: float) -> World:
    """Each phase's requests times ``scale``, at least one task per day."""
    phases = tuple(
        replace(p, requests=max(p.days, round(p.requests * scale))) for p in world.phases
    )
    return replace(world, phases=phases)


def arm_specs(args: argparse.Namespace) -> list[ArmSpec]:
    mode = MODES[args.guidance]
    learner = args.learner == "on" or (args.learner == "auto" and mode != "retrieval")
    specs = {
        "control": ArmSpec("control", None, False, args.learner_timeout),
        "guided": ArmSpec("guided", mode, learner, args.learner_timeout, args.budget_ms,
                          args.settings),
    }
    return [specs[a] for a in (("control", "guided") if args.arms == "both" else (args.arms,))]


def run_arms(world: World, specs: list[ArmSpec], workdir: Path) -> dict[str, ArmResult]:
    results: dict[str, ArmResult] = {}
    with SimServer(world) as server, tqdm(
        total=len(server.tasks) * len(specs), unit="task", dynamic_ncols=True
    ) as bar:
        for spec in specs:
            bar.set_description(spec.name)

            def progress(event: str) -> None:
                if event == "task":
                    bar.update()
                else:
                    bar.set_postfix_str(event)

            results[spec.name] = run_arm(spec, server, workdir / spec.name, progress)
            bar.set_postfix_str("")
    return results


def client_latency(result: ArmResult) -> dict[str, Any]:
    values = list(result.call_ms.values())
    return asdict(Latency(len(values), percentile(values, 0.5), percentile(values, 0.95)))


def arm_json(result: ArmResult) -> dict[str, Any]:
    records = result.log.records
    return {
        "guidance": result.mode or "off",
        "tasks_seen": len(records),
        "successes": sum(1 for r in records if r.succeeded),
        "named": sum(1 for r in records if r.named is not None),
        "client_latency_ms": client_latency(result),
        "errors": len(result.errors),
        "first_errors": result.errors[:5],
        "wall_seconds": round(result.wall_seconds, 1),
        "proxy_stats": result.proxy_stats,
    }


def retrain_json(results: dict[str, ArmResult]) -> list[dict[str, Any]]:
    """The guided arm's nightly jobs; the control arm has guidance off and runs none."""
    guided = results.get("guided")
    return [] if guided is None else [asdict(run) for run in guided.learner_runs]


def build_report(args: argparse.Namespace, argv: list[str], world: World,
                 results: dict[str, ArmResult], report: Report, wall: float) -> dict[str, Any]:
    return {
        "world": world.name,
        "command": command_line(argv),
        "guidance": args.guidance,
        "scale": args.scale,
        "budget_ms": args.budget_ms,
        "settings": args.settings,
        "seed": world.seed,
        "metrics": metrics_json(report),
        "reachable_accuracy": reachable_accuracy(world),
        "retrain": retrain_json(results),
        "arms": {name: arm_json(r) for name, r in results.items()},
        "wall_seconds": round(wall, 1),
    }


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "bench.learning", *argv])


def print_summary(data: dict[str, Any], report: Report) -> None:
    print(f"\nworld {data['world']}  guidance {data['guidance']}  scale {data['scale']}  "
          f"wall {data['wall_seconds']:.0f} s")
    print(summary_table(report))
    reach = "  ".join(f"{k} {v:.2f}" for k, v in data["reachable_accuracy"].items())
    print(f"(not a spec metric) accuracy reachable by naming only strategies the model has "
          f"used unprompted: {reach}")
    runs = [run for run in data["retrain"] if run["status"] != "skipped"]
    if data["retrain"] and not runs:
        why = ("the proxy never loads an adapter in retrieval-only"
               if data["guidance"] == "retrieval-only" else "--learner off")
        print(f"learner: not run ({why}; --learner on forces it)")
    for run in runs:
        print(f"learner day {run['day'] + 1}: {run['status']} ({run['seconds']:.1f} s, then "
              f"serving {run['serving'] or 'no adapter'}) "
              f"{run['last_line'][:100]}")
    for name, arm in data["arms"].items():
        if arm["errors"]:
            print(f"{name} arm: {arm['errors']} failed tasks, e.g. {arm['first_errors'][0]}")
    print(f"reproduce: {data['command']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    world = scale_world(load_world(args.world), args.scale)
    if args.seed is not None:
        world = replace(world, seed=args.seed)
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=f"tactician-bench-{world.name}-"))
    try:
        results = run_arms(world, arm_specs(args), workdir)
    finally:
        if args.keep:
            print(f"stores and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    empty = ArmLog(records=())
    control = results["control"].log if "control" in results else empty
    guided = results["guided"].log if "guided" in results else empty
    report = compute(world, control, guided)
    data = build_report(args, argv, world, results, report, time.perf_counter() - start)
    args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        plot(report, args.plot, f"{world.name}: guidance {args.guidance}, scale {args.scale}")
    print_summary(data, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
