"""The real proxy as a subprocess on a free loopback port, and the learner's nightly job.

Each arm gets its own folder with its config, store and logs, so two arms never share
learned state. The generated config carries only deployment settings: the upstream, the
store, the guidance switch and mode, tokens. Nothing about the world reaches the proxy.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from proxy.local_model import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0  # "both"/"model" load the small model before the proxy listens
STOP_TIMEOUT_S = 40.0  # above the proxy's 30 s graceful shutdown
DRAIN_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 2000


def drain(url: str, timeout_s: float = DRAIN_TIMEOUT_S) -> dict[str, Any]:
    """Wait until a proxy's recorder has written everything it was given, spilled rows
    included; its last ``/healthz`` recorder counters."""
    deadline = time.monotonic() + timeout_s
    recorder: dict[str, Any] = {}
    while time.monotonic() < deadline:
        recorder = httpx.get(url + "/healthz", timeout=10).json().get("recorder", {})
        # An empty queue is not enough: the writer batches rows it has dequeued.
        settled = sum(recorder.get(k, 0) for k in ("written", "dropped", "write_errors"))
        if (recorder.get("queue_depth", 0) == 0 and settled >= recorder.get("enqueued", 0)
                and recorder.get("replayed", 0) >= recorder.get("spilled", 0)):
            break
        time.sleep(0.1)
    return recorder


def proxy_config(directory: Path, port: int, upstream: str, mode: str | None) -> dict[str, Any]:
    """The proxy's YAML config; ``mode`` None turns guidance off (the control arm).

    ``holdout: 0`` in the guided arm: the benchmark brings its own control arm, and the
    proxy's holdout episodes would otherwise count as unguided guided-arm tasks.
    """
    guidance: dict[str, Any] = {"enabled": False}
    if mode is not None:
        guidance = {"enabled": True, "mode": mode, "holdout": 0.0}
    return {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"base_url": upstream},
        "store": {"path": str(directory / "tactician.duckdb")},
        "guidance": guidance,
        "outcomes": {"token": secrets.token_hex(16)},
        "admin": {"token": secrets.token_hex(16)},
        "learner": {"schedule": None},  # the harness runs the nightly job itself, per day
        "logging": {"level": "WARNING"},
    }


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def last_line(text: str) -> str:
    """The last non-empty line; progress bars redraw with \\r, so split on it too."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    return next((line for line in reversed(lines) if line), "")


class ProxyProcess:
    """``python -m proxy --config <generated yaml>``, started and stopped by the harness."""

    def __init__(self, directory: Path, upstream: str, mode: str | None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.config = proxy_config(directory, self.port, upstream, mode)
        self.config_path = directory / "proxy.yaml"
        self.log_path = directory / "proxy.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), "utf-8")
        command = [sys.executable, "-m", "proxy", "--config", str(self.config_path)]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"the proxy exited at start:\n{tail(self.log_path)}")
            try:
                if self._http.get("/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the proxy did not answer /healthz:\n{tail(self.log_path)}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._http.close()

    def post_outcome(self, key: str, identifier: str, success: bool) -> None:
        token = self.config["outcomes"]["token"]
        response = self._http.post(
            "/v1/outcomes",
            json={key: identifier, "success": success},
            headers={"authorization": f"Bearer {token}"},
        )
        response.raise_for_status()

    def drain(self) -> None:
        """Wait until the recorder has written every call and outcome, so the learner's
        snapshot holds the whole day."""
        drain(self.url)

    def stats(self) -> dict[str, Any]:
        response = self._http.get("/v1/tactician/stats")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LearnerRun:
    """One nightly job: ``python -m learner train --config <the proxy's yaml>``."""

    phase: str
    day: int
    day_in_phase: int
    status: str  # ok | failed | timeout | skipped
    exit_code: int | None
    seconds: float
    last_line: str


def run_learner(
    config_path: Path, log_path: Path, timeout_s: float
) -> tuple[str, int | None, float]:
    """Run the job to completion; (status, exit code, wall seconds). Output goes to log_path."""
    command = [sys.executable, "-m", "learner", "train", "--config", str(config_path)]
    start = time.perf_counter()
    with log_path.open("wb") as log:
        try:
            done = subprocess.run(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired:
            return "timeout", None, time.perf_counter() - start
    status = "ok" if done.returncode == 0 else "failed"
    return status, done.returncode, time.perf_counter() - start
