"""Overhead benchmark: the same workload direct to a mock upstream, through Tactician
(guidance off; on, with hint-memory hits and misses, modes "retrieval" and "both") and
through the LiteLLM proxy, interleaved in short rounds in one run.

``python -m bench.overhead --out data/bench/overhead.json``

Each round runs every arm at every open-loop rate (default 50, 200 and 500 req/s),
streams at ``--stream-rates``, and concurrency 1, in a shuffled order, so drift on a
shared machine hits all arms alike. Added latency is an arm's percentile minus the
direct arm's at the same rate. A ramp then finds the rate at which errors start
(docs/benchmarks.md explains every number and how to read it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import overhead_report as report
from bench.harness.processes import REPO_ROOT, Service, cpu_seconds, rss_mb
from bench.loadgen import Request, Run, build_request, closed_loop, open_loop, run_sync
from bench.mock_upstream import install_uvloop, mock_service
from bench.targets import (
    REPEATED_TASKS,
    chat_body,
    code_version,
    ensure_litellm_venv,
    litellm_service,
    litellm_version,
    novel_task,
    publish_random_adapter,
    read_store,
    tactician_service,
)

PATH = "/v1/chat/completions"
ALL_TARGETS = ("direct", "off", "retrieval", "both", "litellm")
# Streams and the ramp: the steady state of each kind of target (a hint hit when on).
FOCUS_ARMS = ("direct", "off", "retrieval-hit", "litellm")
RAMP_TIMEOUT_S = 2.0  # a request not answered in this long counts as an error in the ramp
SEED_CALLS_PER_TASK = 3


@dataclass(frozen=True)
class Arm:
    name: str
    target: str
    tasks: str  # "novel": nobody asked this before; "repeated": known tasks with outcomes

    @property
    def model(self) -> str:
        # The model name tags which arm a stored call came from (the mock ignores it).
        return "mock" if self.target in ("direct", "litellm") else f"bench-{self.tasks}"


def build_arms(targets: list[str]) -> list[Arm]:
    arms: list[Arm] = []
    for target in targets:
        if target in ("retrieval", "both"):
            arms += [Arm(f"{target}-hit", target, "repeated"),
                     Arm(f"{target}-miss", target, "novel")]
        else:
            arms.append(Arm(target, target, "novel"))
    return arms


def request_maker(arm: Arm, stream: bool, seed: int) -> Callable[[int], Request]:
    rng = random.Random(seed)

    def make(i: int) -> Request:
        task = rng.choice(REPEATED_TASKS) if arm.tasks == "repeated" else novel_task(rng)
        return Request(build_request(PATH, chat_body(task, arm.model, stream)), tag=arm.name)

    return make


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "data/bench/overhead.json")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "data/bench/overhead")
    p.add_argument("--targets", type=_names, default=",".join(ALL_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--rates", type=_rates, default="50,200,500",
                   help="open-loop rates, req/s")
    p.add_argument("--stream-rates", type=_rates, default="200",
                   help="open-loop rates for streams")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="per arm, rate and round")
    p.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds before each")
    p.add_argument("--c1-seconds", type=float, default=2.0, help="concurrency-1 per round")
    p.add_argument("--ramp", type=_rates, default="300,500,750,1000,1500,2000,3000",
                   help="rates for the error-onset ramp ('' skips it)")
    p.add_argument("--ramp-seconds", type=float, default=2.0)
    p.add_argument("--latency-ms", type=float, default=5.0, help="the mock's latency")
    p.add_argument("--litellm-venv", type=Path, default=REPO_ROOT / ".bench-venv-litellm")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown or "direct" not in args.targets:
        p.error(f"--targets must include direct and only name {', '.join(ALL_TARGETS)}")
    return args


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _rates(text: str) -> list[float]:
    return [float(r) for r in _names(text)]


class Bench:
    """The services and everything measured, in one place for the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mock = mock_service(args.workdir, args.latency_ms)
        self.services: dict[str, Service] = {}
        self.arms = build_arms(args.targets)
        self.samples: dict[str, dict[str, list[Any]]] = {}
        self.cpu: dict[str, float] = {"cpu_s": 0.0, "wall_s": 0.0}
        # CPU seconds and requests per (workload, arm): the server's cost per request,
        # which contention from other processes on the machine does not inflate.
        self.server_cpu: dict[str, dict[str, list[float]]] = {}
        self.rss: dict[str, dict[str, float]] = {}
        self.info: dict[str, Any] = {}

    def port(self, target: str) -> int:
        return self.mock.port if target == "direct" else self.services[target].port

    def pid(self, target: str) -> int:
        return self.mock.pid if target == "direct" else self.services[target].pid

    def start(self) -> None:
        self.mock.start()
        upstream = self.mock.url
        for target in self.args.targets:
            directory = self.args.workdir / target
            if target == "litellm":
                exe = ensure_litellm_venv(self.args.litellm_venv)
                self.info["litellm_version"] = litellm_version(exe)
                svc = litellm_service(directory, upstream, exe)
            elif target != "direct":
                guidance: dict[str, Any] = {"enabled": False}
                if target in ("retrieval", "both"):
                    guidance = {"enabled": True, "mode": target, "holdout": 0.0}
                if target == "both":
                    publish_random_adapter(directory / "tactician.state")
                svc = tactician_service(directory, upstream, guidance)
            else:
                continue
            svc.start()
            self.services[target] = svc
        for target in ("retrieval", "both"):
            if target in self.services:
                seed_memory(self.services[target].url)
        for target, svc in self.services.items():
            self.rss[target] = {"idle_mb": rss_mb(svc.pid)}

    def stop(self) -> None:
        for target, svc in self.services.items():
            self.rss[target].update(end_mb=rss_mb(svc.pid), peak_mb=rss_mb(svc.pid, "VmHWM"))
            svc.stop()
        self.mock.stop()

    def record(self, key: str, arm: str, run: Run, server_cpu_s: float) -> None:
        self.samples.setdefault(key, {}).setdefault(arm, []).extend(run.samples)
        self.cpu["cpu_s"] += run.cpu_seconds
        self.cpu["wall_s"] += run.seconds
        acc = self.server_cpu.setdefault(key, {}).setdefault(arm, [0.0, 0.0])
        acc[0] += server_cpu_s
        acc[1] += len(run.samples)

    def segment(self, arm: Arm, key: str, stream: bool, rate: float | None, seed: int) -> None:
        a = self.args
        make = request_maker(arm, stream, seed)
        port, pid = self.port(arm.target), self.pid(arm.target)
        if rate is None:
            run_sync(closed_loop(port, make, 1, min(a.warmup, 0.3)))
            cpu0 = cpu_seconds(pid)
            run = run_sync(closed_loop(port, make, 1, a.c1_seconds))
        else:
            run_sync(open_loop(port, make, rate, a.warmup))
            cpu0 = cpu_seconds(pid)
            run = run_sync(open_loop(port, make, rate, a.seconds))
        self.record(key, arm.name, run, cpu_seconds(pid) - cpu0)

    def rounds(self) -> None:
        a = self.args
        order = random.Random(a.seed)
        stream_arms = [arm for arm in self.arms if arm.name in FOCUS_ARMS]
        plan: list[tuple[str, list[Arm], bool, float | None]] = [
            *((f"chat@{r:g}", self.arms, False, r) for r in a.rates),
            *((f"stream@{r:g}", stream_arms, True, r) for r in a.stream_rates),
            ("chat@c1", self.arms, False, None), ("stream@c1", stream_arms, True, None),
        ]
        for rnd in range(a.rounds):
            print(f"round {rnd + 1}/{a.rounds}", flush=True)
            for key, arms, stream, rate in plan:
                for arm in order.sample(arms, len(arms)):
                    self.segment(arm, key, stream, rate, order.randrange(1 << 30))

    def ramp(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for arm in self.arms:
            if arm.name not in FOCUS_ARMS:
                continue
            steps = []
            for rate in self.args.ramp:
                make = request_maker(arm, False, int(rate))
                run = run_sync(open_loop(self.port(arm.target), make, rate,
                                         self.args.ramp_seconds, timeout_s=RAMP_TIMEOUT_S))
                steps.append(report.ramp_step(rate, run))
                print(f"ramp {arm.name} {rate:g} req/s: {steps[-1]}", flush=True)
                time.sleep(1.0)  # let an overloaded server drain before the next step
                if steps[-1]["error_rate"] > report.ERROR_ONSET:
                    break
            found[arm.name] = steps
        return found

    def hint_paths(self) -> dict[str, Any]:
        """How the guided arms were really served, from the proxies' own stores."""
        out: dict[str, Any] = {}
        for target in ("retrieval", "both"):
            if target in self.services:
                out[target] = read_store(
                    self.args.workdir / target / "tactician.duckdb",
                    "SELECT model, coalesce(hint_source, 'skip:' || hint_skip_reason) AS path,"
                    " count(*) AS n FROM calls GROUP BY ALL ORDER BY model, n DESC")
        return out


def seed_memory(url: str) -> None:
    """Calls with outcomes for every repeated task, so later repeats are hint hits."""
    rng = random.Random(1)
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for task in REPEATED_TASKS * SEED_CALLS_PER_TASK:
            resp = client.post(PATH, content=chat_body(task, "bench-seed"),
                               headers={"content-type": "application/json"})
            resp.raise_for_status()
            client.post("/v1/outcomes", json={"request_id": resp.headers["x-request-id"],
                                              "success": rng.random() < 0.7}).raise_for_status()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.overhead " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    loop = install_uvloop()
    bench = Bench(args)
    started = time.time()
    try:
        bench.start()
        bench.rounds()
        ramp = bench.ramp() if args.ramp else {}
    finally:
        bench.stop()
    result = report.build(bench.samples, bench.server_cpu, ramp, bench.rss, {
        "command": command, "started": started, "seconds": round(time.time() - started, 1),
        "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "generator_loop": loop,
        "generator_cpu_share": round(bench.cpu["cpu_s"] / max(bench.cpu["wall_s"], 1e-9), 3),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "hint_paths": bench.hint_paths(), "code": code_version(), **bench.info,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str), "utf-8")
    print(report.render(result))
    print(f"\nreport: {args.out}\nreproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
