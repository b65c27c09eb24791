"""Wall time of a nightly learner run on N recorded trajectories.

    python -m bench.learner_time [--world FILE] [--trajectories 2000] [--then 300]
                                 [--out F] [--keep | --record-only]

Records N tasks of a world (default office-ops) through the real proxy (``python -m
proxy``, guided, retrieval-only), with their outcomes posted to the webhook, so the store
holds exactly what a deployment's would. Then, with that proxy still serving, it runs
``python -m learner train --config <the proxy's yaml>`` once, as the nightly job does,
and reports the job's wall time, the phase breakdown from its run record (dataset, train,
export, verify, gate, publish) and what the training managed within its time budget.
That first run has no adapter to continue, so it trains from scratch. With ``--then M``
another M tasks (the next day) are recorded and the job runs again: the usual night,
which continues the adapter the first run published.

``--record-only`` stops after recording and keeps the store, so that the same job can be
timed on another machine (a GPU one) with ``python -m learner train --config`` on it; the
kept yaml names the store by its absolute path, so point ``store.path`` at the copy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.harness.agent import Agent, ArmResult
from bench.harness.processes import ProxyProcess, arm_guidance, last_line, run_learner, tail
from bench.sim import OFFICE_OPS, load_world
from bench.sim.server import SimServer
from bench.sim.world import Task, World
from learner import publish
from proxy.config import load_config

DEFAULT_WORLD = OFFICE_OPS
TARGET_S = 600.0  # issue #4: a nightly run on 2,000 trajectories on 2 CPU cores


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.learner_time", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=DEFAULT_WORLD)
    parser.add_argument("--trajectories", type=int, default=2000,
                        help="tasks (episodes) to record before the run")
    parser.add_argument("--then", type=int, default=0,
                        help="record this many more tasks and run the job again (warm)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds before the learner job is killed")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep", action="store_true", help="keep the store and logs")
    keep.add_argument("--record-only", action="store_true",
                      help="record the trajectories, keep the store, run no job")
    args = parser.parse_args(argv)
    if args.record_only and args.then:
        parser.error("--then times a second night: it needs the first, not --record-only")
    return args


def sized(world: World, trajectories: int) -> World:
    """The world's phases scaled so the stream holds about ``trajectories`` tasks."""
    total = sum(p.requests for p in world.phases)
    scale = trajectories / total
    phases = tuple(replace(p, requests=max(p.days, round(p.requests * scale)))
                   for p in world.phases)
    return replace(world, phases=phases)


def record(tasks: Sequence[Task], proxy: ProxyProcess, server: SimServer) -> ArmResult:
    result = ArmResult("guided", "retrieval")
    agent = Agent(server, proxy, result)
    for task in tqdm(tasks, unit="task", desc="recording", dynamic_ncols=True):
        agent.run(task)
    proxy.drain()
    return result


def nightly_job(proxy: ProxyProcess, log_path: Path, timeout: float) -> dict[str, Any]:
    print("learner: running python -m learner train (progress in "
          f"{log_path})", file=sys.stderr, flush=True)
    status, code, seconds = run_learner(proxy.config_path, log_path, timeout)
    runs = publish.recent_runs(load_config(proxy.config_path).state_dir, limit=1)
    run = runs[0] if runs else {}
    metrics = json.loads(run.get("metrics") or "{}")  # stored as JSON text
    return {
        "learner": {"status": status, "exit_code": code, "wall_seconds": round(seconds, 1),
                    "last_line": last_line(tail(log_path))},
        "phases_seconds": metrics.get("seconds", {}),
        "counts": metrics.get("counts", {}),
        "train": metrics.get("train", {}),
        "gate": metrics.get("gate", {}),
        "agreement": metrics.get("agreement", {}),
        "decision": run.get("decision"),
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    world = sized(load_world(args.world), args.trajectories + args.then)
    with SimServer(world) as server, \
            ProxyProcess(workdir / "proxy", server.base_url, arm_guidance("retrieval")) as proxy:
        first = server.tasks[: args.trajectories]
        errors = len(record(first, proxy, server).errors)
        if args.record_only:
            return {"world": world.name, "trajectories": len(first),
                    "recording_errors": errors, "config": str(proxy.config_path)}
        result = {"world": world.name, "trajectories": len(first),
                  **nightly_job(proxy, workdir / "learner.log", args.timeout)}
        if args.then:
            errors += len(record(server.tasks[len(first):], proxy, server).errors)
            result["next_night"] = {"trajectories": len(server.tasks),
                                    **nightly_job(proxy, workdir / "learner-2.log",
                                                  args.timeout)}
    return {**result, "recording_errors": errors, "target_seconds": TARGET_S}


def print_summary(result: dict[str, Any], command: str) -> None:
    print_run(result, result["world"], result["target_seconds"])
    if "next_night" in result:
        print_run(result["next_night"], result["world"], result["target_seconds"])
    print(f"reproduce: {command}")


def print_run(run: dict[str, Any], world: str, target: float) -> None:
    job = run["learner"]
    train = run["train"]
    print(f"\nnightly learner on {run['trajectories']} recorded trajectories "
          f"({world}): {job['status']} in {job['wall_seconds']:.0f} s "
          f"(target <= {target:.0f} s)")
    for phase, seconds in run["phases_seconds"].items():
        print(f"  {phase:8s} {seconds:8.1f} s")
    if train:
        start = f"continuing {train['init']}" if train.get("init") else "from scratch"
        print(f"  training {start} on {train.get('examples')} examples: "
              f"{train.get('steps')}/{train.get('planned_steps')} steps, "
              f"stopped by {train.get('stop_reason')}, {train.get('steps_per_s')} steps/s, "
              f"loss {train.get('loss_first'):.3f} -> {train.get('loss_last'):.3f}")
    gate = run["gate"]
    if gate:
        print(f"  gate: new {gate['new']}, retrieval {gate['retrieval']}, "
              f"serving {gate['current']}")
    print(f"  decision: {run['decision']}; {job['last_line'][:160]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tactician-learner-time-"))
    start = time.perf_counter()
    try:
        result = measure(args, workdir)
    finally:
        if args.keep or args.record_only:
            print(f"store and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    command = shlex.join(["python", "-m", "bench.learner_time", *argv])
    result["command"] = command
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.record_only:
        print(f"recorded {result['trajectories']} trajectories ({result['recording_errors']} "
              f"errors); the job: python -m learner train --config {result['config']}")
        return 0 if result["recording_errors"] == 0 else 1
    print_summary(result, command)
    jobs = [result, result.get("next_night") or result]
    return 0 if all(job["learner"]["status"] == "ok" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
