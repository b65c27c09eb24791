"""Fault benchmark: a bounded run of hostile traffic through a real Tactician process.

``python -m bench.faults [--requests 10000] [--out data/bench/faults.json]``

Phase 1 (80 % of ``--requests``): upstream 5xx and 429, upstream timeouts, slow and
aborted streams, client disconnects, outcomes and health checks, with the small model
too slow for its budget (``guidance.budget_ms: 1``) and a one-row recorder queue, then a
burst of outcomes, so rows spill to disk. Phase 2: the small model is a corrupt GGUF,
and the proxy is killed with SIGKILL mid-load, then restarted on the same store with a
missing model file.
Then an in-process recorder throughput test (bench/recorder_load.py).

Checks: the proxy stays up; every call whose ``x-request-id`` a client saw and every
accepted (202) outcome is in the store (read through ``POST /v1/tactician/snapshot``
while running, and from the file after a clean shutdown); after the kill the store
opens, no row is duplicated and only records finished within ~1 s of the kill may be
missing. Prints PASS/FAIL per check; exits 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.processes import REPO_ROOT, ProxyProcess
from bench.loadgen import Request, Run, Sample, build_request, open_loop, run_sync
from bench.mock_upstream import install_uvloop, mock_service
from bench.recorder_load import recorder_checks
from bench.targets import (
    REPEATED_TASKS,
    chat_body,
    code_version,
    novel_task,
    publish_random_adapter,
    read_store,
    tactician_service,
)

# (behaviour, weight, expected status, whether the client gets a complete answer)
MIX: tuple[tuple[str, int, int, bool], ...] = (
    ("ok", 34, 200, True), ("stream", 10, 200, True), ("error-500", 3, 500, True),
    ("error-503", 2, 503, True), ("error-429", 2, 429, True), ("hang", 2, 504, True),
    ("slow", 5, 200, True), ("slowstream", 5, 200, True), ("abort", 2, 502, True),
    ("abort-stream", 3, 200, False), ("hangup-sent", 5, 0, False),
    ("hangup-first", 5, 200, False), ("outcome", 18, 202, True), ("healthz", 4, 200, True),
)
EXPECTED = {name: (status, complete) for name, _, status, complete in MIX}
UPSTREAM_TIMEOUT_S = 1.0
BURST_RATE = 1500.0
CLIENT_TIMEOUT_S = 30.0  # far above any answer the mix expects; a hit means a stall
KILL_LOSS_WINDOW_S = 1.0  # what a kill -9 may lose: ~flush_interval_ms plus a batch write
PATH = "/v1/chat/completions"


@dataclass
class Checks:
    """Correctness checks PASS or FAIL (and fail the run); performance targets (names
    starting "target:") are MET or MISSED and fail the run only with ``--strict``."""

    strict: bool = False
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.results.append((name, ok, detail))
        word = ("MET" if ok else "MISSED") if name.startswith("target:") else \
            ("PASS" if ok else "FAIL")
        print(f"{word:<6} {name}{'  — ' + detail if detail else ''}", flush=True)

    @property
    def passed(self) -> bool:
        return all(ok for name, ok, _ in self.results
                   if self.strict or not name.startswith("target:"))


def fault_request(kind: str, i: int, rng: random.Random) -> Request:
    """One request of the mix; ``kind`` picks the mock's behaviour through the model."""
    episode = {"x-episode-id": f"ep-{i // 3}"}
    if kind == "outcome":
        target = {"episode_id": f"ep-{rng.randrange(i // 3 + 1)}"} if i % 2 else \
            {"request_id": f"req-unknown-{i}"}
        body = json.dumps({**target, "success": rng.random() < 0.6}).encode()
        return Request(build_request("/v1/outcomes", body), tag=kind)
    if kind == "healthz":
        return Request(build_request("/healthz", b"", method="GET"), tag=kind)
    model = {"ok": "mock", "stream": "mock", "slow": "slow-300", "slowstream": "slowstream-60",
             "abort-stream": "abort", "hangup-sent": "slow-200",
             "hangup-first": "slowstream-100"}.get(kind, kind)
    stream = kind in ("stream", "slowstream", "abort-stream", "hangup-first")
    task = rng.choice(REPEATED_TASKS) if rng.random() < 0.5 else novel_task(rng)
    hangup = {"hangup-sent": "sent", "hangup-first": "first_byte"}.get(kind)
    return Request(build_request(PATH, chat_body(task, model, stream), episode), hangup, kind)


def mix_maker(seed: int, only: tuple[str, ...] | None = None) -> Any:
    rng = random.Random(seed)
    kinds = [name for name, *_ in MIX if only is None or name in only]
    weights = [w for name, w, *_ in MIX if only is None or name in only]

    def make(i: int) -> Request:
        return fault_request(rng.choices(kinds, weights)[0], i, rng)

    return make


def seen(samples: list[Sample]) -> tuple[dict[str, Sample], dict[str, Sample]]:
    """Calls whose id a client saw, and outcomes the proxy accepted, by id."""
    calls = {s.request_id: s for s in samples
             if s.request_id and s.tag not in ("outcome", "healthz")}
    outcomes: dict[str, Sample] = {}
    for s in samples:
        if s.tag == "outcome" and s.status == 202:
            outcomes[json.loads(s.body)["id"]] = s
    return calls, outcomes


def stored_ids(db: Path) -> tuple[set[str], set[str], int]:
    calls = read_store(db, "SELECT request_id FROM calls")
    outcomes = read_store(db, "SELECT outcome_id FROM outcomes")
    dup = read_store(db, "SELECT count(*) - count(DISTINCT request_id) AS d FROM calls")
    return ({r["request_id"] for r in calls}, {r["outcome_id"] for r in outcomes},
            int(dup[0]["d"]))


def statuses(samples: list[Sample]) -> dict[str, dict[str, int]]:
    by_kind: dict[str, Counter[str]] = {}
    for s in samples:
        outcome = f"{s.status}" + ("" if s.error is None else f"/{s.error}")
        by_kind.setdefault(s.tag, Counter())[outcome] += 1
    return {k: dict(v) for k, v in sorted(by_kind.items())}


def wrong_answers(samples: list[Sample]) -> Counter[str]:
    wrong: Counter[str] = Counter()
    for s in samples:
        status, complete = EXPECTED[s.tag]
        if s.status != status or (s.error is None) != complete:
            wrong[f"{s.tag}: {s.status}/{s.error}"] += 1
    return wrong


def check_ids(checks: Checks, label: str, samples: list[Sample], db: Path,
              before: float | None = None) -> list[float]:
    """Every seen call and accepted outcome is stored; with ``before`` (a kill time),
    returns how long before the kill each missing record had completed (s)."""
    calls, outcomes = seen(samples)
    call_ids, outcome_ids, dup = stored_ids(db)
    missing = [s for i, s in calls.items() if i not in call_ids]
    missing += [s for i, s in outcomes.items() if i not in outcome_ids]
    checks.add(f"{label}: no duplicated call rows", dup == 0, f"{dup} duplicates")
    if before is None:
        checks.add(f"{label}: every seen call and accepted outcome is stored", not missing,
                   f"{len(calls)} calls, {len(outcomes)} outcomes, {len(missing)} missing")
        return []
    ages = sorted(before - s.done for s in missing)
    old = [a for a in ages if a > KILL_LOSS_WINDOW_S]
    checks.add(f"{label}: only records from the last {KILL_LOSS_WINDOW_S:g} s before the "
               "kill are missing", not old,
               f"{len(calls)} calls and {len(outcomes)} outcomes finished before the kill, "
               f"{len(missing)} missing, oldest {max(ages, default=0) * 1000:.0f} ms old")
    return ages


class FaultRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir: Path = args.workdir
        self.mock = mock_service(self.dir, 5.0)
        self.checks = Checks(strict=args.strict)
        self.report: dict[str, Any] = {}

    def proxy(self, model_path: Path, store: dict[str, Any]) -> ProxyProcess:
        guidance = {"enabled": True, "mode": "both", "holdout": 0.0, "budget_ms": 1,
                    "model_path": str(model_path)}
        svc = tactician_service(self.dir / "proxy", self.mock.url, guidance, store=store,
                                upstream_extra={"timeout_s": UPSTREAM_TIMEOUT_S})
        svc.start()
        return svc

    def clean_stop(self, svc: ProxyProcess, label: str) -> None:
        """SIGTERM; uvicorn re-raises it after its graceful shutdown, so -15 is clean
        too. The recorder checkpoints on the way out: no WAL may be left behind."""
        code = svc.stop()
        wal = self.dir / "proxy" / "tactician.duckdb.wal"
        left = wal.stat().st_size if wal.exists() else 0
        self.checks.add(f"{label}: clean shutdown, store checkpointed",
                        code in (0, -15) and left == 0, f"exit code {code}, WAL {left} bytes")

    def phase_faults(self, n: int) -> None:
        from proxy.models import default_gguf

        publish_random_adapter(self.dir / "proxy" / "tactician.state")
        svc = self.proxy(default_gguf(), {"queue_size": 1})
        run: Run = run_sync(open_loop(svc.port, mix_maker(1), self.args.rate,
                                      n / self.args.rate, CLIENT_TIMEOUT_S))
        # A burst of outcomes (cheap for the proxy, one row each) outruns the writer,
        # so the one-row queue overflows and the spill path is exercised for sure.
        burst: Run = run_sync(open_loop(svc.port, mix_maker(3, ("outcome",)), BURST_RATE,
                                        max(200, n // 20) / BURST_RATE, CLIENT_TIMEOUT_S))
        run.samples += burst.samples
        wrong = wrong_answers(run.samples)
        self.checks.add("faults: the proxy stayed up", svc.alive())
        self.checks.add("faults: every answer is the expected one", not wrong,
                        ", ".join(f"{k} ×{v}" for k, v in wrong.most_common(6)))
        rec = svc.drain()
        snap = svc.snapshot()
        check_ids(self.checks, "faults (snapshot while running)", run.samples, snap)
        sent = sum(1 for s in run.samples if s.tag not in ("outcome", "healthz"))
        rows = read_store(snap, "SELECT count(*) AS n FROM calls")[0]["n"]
        self.checks.add("faults: one call row per request sent, hang-ups included",
                        rows == sent, f"{sent} requests, {rows} rows")
        self.checks.add("faults: recorder dropped nothing", rec["dropped"] == 0
                        and rec["write_errors"] == 0, json.dumps(rec))
        self.clean_stop(svc, "faults")
        check_ids(self.checks, "faults (store after shutdown)", run.samples,
                  self.dir / "proxy" / "tactician.duckdb")
        self.report["faults"] = {"requests": len(run.samples), "statuses": statuses(run.samples),
                                 "recorder": rec, "seconds": round(run.seconds, 1)}

    def phase_kill(self, n: int) -> None:
        corrupt = self.dir / "corrupt.gguf"
        from proxy.models import default_gguf

        corrupt.write_bytes(default_gguf().read_bytes()[: 4 << 20])
        svc = self.proxy(corrupt, {})
        seconds = n / self.args.rate
        make = mix_maker(2, ("ok", "stream", "outcome"))

        async def load_then_kill() -> tuple[Run, float]:
            task = asyncio.create_task(open_loop(svc.port, make, self.args.rate, seconds,
                                                 CLIENT_TIMEOUT_S))
            await asyncio.sleep(seconds / 2)
            killed_at = time.perf_counter()
            svc.kill()
            return await task, killed_at

        run, killed_at = run_sync(load_then_kill())
        restarted = self.proxy(self.dir / "missing.gguf", {})
        self.checks.add("kill: the store opens and the proxy restarts on it", restarted.alive())
        after: Run = run_sync(open_loop(restarted.port, make, 50, 2.0))
        restarted.drain()
        self.clean_stop(restarted, "restart")
        db = self.dir / "proxy" / "tactician.duckdb"
        before = [s for s in run.samples if s.done < killed_at]
        ages = check_ids(self.checks, "kill", before, db, before=killed_at)
        check_ids(self.checks, "after restart", after.samples, db)
        counts = read_store(db, "SELECT (SELECT count(*) FROM calls) AS calls, "
                                "(SELECT count(*) FROM outcomes) AS outcomes")[0]
        self.report["kill"] = {"missing_ms_before_kill": [round(a * 1000) for a in ages],
                               "completed_before_kill": len(before),
                               "after_restart": statuses(after.samples), "store": counts}

    def run(self) -> int:
        self.mock.start()
        try:
            n = self.args.requests
            self.phase_faults(int(n * 0.8))
            self.phase_kill(n - int(n * 0.8))
        finally:
            self.mock.stop()
        self.report["recorder"] = recorder_checks(self.dir / "recorder", self.checks,
                                                  self.args.recorder_seconds)
        return 0 if self.checks.passed else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=100.0, help="open-loop req/s")
    p.add_argument("--strict", action="store_true",
                   help="a missed performance target fails the run too")
    p.add_argument("--recorder-seconds", type=float, default=5.0)
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "data/bench/faults")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "data/bench/faults.json")
    args = p.parse_args(argv)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    install_uvloop()
    fault_run = FaultRun(args)
    code = fault_run.run()
    report = {**fault_run.report, "passed": code == 0, "code": code_version(),
              "command": "python -m bench.faults " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
              "checks": [{"name": n, "ok": ok, "detail": d}
                         for n, ok, d in fault_run.checks.results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), "utf-8")
    results = fault_run.checks.results
    checks = [ok for name, ok, _ in results if not name.startswith("target:")]
    targets = [ok for name, ok, _ in results if name.startswith("target:")]
    print(f"\n{'PASS' if code == 0 else 'FAIL'}: {sum(checks)}/{len(checks)} checks passed, "
          f"{sum(targets)}/{len(targets)} performance targets met; report {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
