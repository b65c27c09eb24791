"""The proxy's side of learning: the nightly learner job and its run records.

The learner runs as a separate process (``python -m learner train --config``) at low
priority with few threads, so serving keeps the CPU it needs. It cannot write the store
while the proxy holds it, so it leaves run records in ``<state_dir>/runs/``; this
module carries them into the ``learner_runs`` table.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from proxy.config import Config
from proxy.recorder import Recorder
from proxy.store import Store

log = logging.getLogger("tactician.learning")
INGEST_EVERY_S = 2.0


class LearnerJobs:
    def __init__(self, config: Config, recorder: Recorder) -> None:
        self.config = config
        self.recorder = recorder
        self.runs_dir = config.state_dir / "runs"
        self.last_exit: int | None = None
        self.running = False
        self.next_run: datetime | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="learner-jobs", daemon=True)

    def start(self) -> None:
        if self.config.learner.schedule and not self.config.source_path:
            log.warning("learner.schedule is set but the config was not read from a file: "
                        "the nightly learner cannot be started")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def status(self) -> dict[str, Any]:
        return {"schedule": self.config.learner.schedule, "running": self.running,
                "next_run": self.next_run.isoformat() if self.next_run else None,
                "last_exit": self.last_exit}

    def _loop(self) -> None:
        self._reschedule()
        while not self._stop.wait(INGEST_EVERY_S):
            try:
                self._tick()
            except Exception:
                # One failed iteration must not end ingestion and the schedule for good.
                log.exception("learner jobs: iteration failed; carrying on")

    def _tick(self) -> None:
        try:
            self.ingest()
        except Exception:
            log.exception("could not ingest learner run records")
        if self.next_run is not None and datetime.now(UTC) >= self.next_run:
            try:
                self.run_once()
            finally:
                # Even after a failed run, so it is not retried on every tick.
                self._reschedule()

    def _reschedule(self) -> None:
        try:
            self.next_run = self._next_fire()
        except Exception:
            # None rather than a stale time: a schedule croniter cannot follow must not
            # fire on every tick. load_config rejects such schedules; this is the backstop.
            self.next_run = None
            log.exception("learner.schedule %r: cannot compute the next run; no scheduled "
                          "runs", self.config.learner.schedule)

    def _next_fire(self) -> datetime | None:
        schedule = self.config.learner.schedule
        if not schedule or not self.config.source_path:
            return None
        from croniter import croniter  # noqa: PLC0415 - only with a schedule

        nxt: datetime = croniter(schedule, datetime.now().astimezone()).get_next(datetime)
        return nxt.astimezone(UTC)

    def run_once(self) -> int:
        """Run one learner cycle to completion (blocking) and return its exit code."""
        assert self.config.source_path is not None
        log_dir = self.config.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        threads = str(self.config.learner.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "TACTICIAN_LEARNER_THREADS": threads}
        # `nice` rather than preexec_fn: the proxy is multi-threaded, where preexec_fn
        # is unsafe.
        cmd = ["nice", "-n", str(self.config.learner.nice), sys.executable, "-m", "learner",
               "train", "--config", self.config.source_path]
        self.running = True
        started = time.monotonic()
        try:
            with (log_dir / f"learner-{int(time.time())}.log").open("w") as out:
                proc = subprocess.run(  # noqa: S603 - our own interpreter and module
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
            self.last_exit = proc.returncode
        finally:
            self.running = False
        log.info("learner run finished with exit %s in %.0f s", self.last_exit,
                 time.monotonic() - started)
        return self.last_exit

    def ingest(self) -> int:
        """Move learner run records from ``runs/*.json`` into the store."""
        if not self.runs_dir.is_dir():
            return 0
        done = self.runs_dir / "ingested"
        count = 0
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                row: dict[str, Any] = json.loads(path.read_text())
                self.recorder.submit(functools.partial(_insert_run, row=row)).result(30)
            except TimeoutError:
                raise  # the writer is busy, the file is fine: the next tick tries again
            except Exception as exc:  # noqa: BLE001 - a record file is outside input
                # One bad file must not hold back the ones after it, nor be retried (and
                # logged) every few seconds: it is set aside for a person to look at.
                log.error("learner run record %s set aside in runs/rejected: %s: %s",
                          path.name, type(exc).__name__, exc)
                (self.runs_dir / "rejected").mkdir(exist_ok=True)
                path.replace(self.runs_dir / "rejected" / path.name)
                continue
            done.mkdir(exist_ok=True)
            path.replace(done / path.name)
            count += 1
        return count


def _insert_run(store: Store, *, row: dict[str, Any]) -> None:
    if not store.query("SELECT 1 FROM learner_runs WHERE run_id = ?", [row["run_id"]]):
        store.insert("learner_runs", [row])

