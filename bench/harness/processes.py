"""Local server processes for the benchmarks: the real proxy (``python -m proxy``), the
mock upstream and LiteLLM as subprocesses on loopback ports, and the learner's nightly job.

Each proxy gets its own folder with its config, store and logs, so two arms never share
learned state. The generated config carries only deployment settings: the upstream, the
store, the guidance switch and mode, tokens. Nothing about a world reaches the proxy.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

import httpx
import yaml

from learner.publish import read_current
from proxy.config import load_config
from proxy.local_model import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0  # "both"/"model" load the small model before the proxy listens
STOP_TIMEOUT_S = 40.0  # above the proxy's 30 s graceful shutdown
DRAIN_TIMEOUT_S = 60.0
# Loading an adapter rebuilds the small model's context (~2 s here); a refused one never
# loads, and the day then starts on what the proxy serves.
ADAPTER_WAIT_S = 60.0
LOG_TAIL_CHARS = 2000


# -- any local server ------------------------------------------------------------

class Service:
    """A local server process: started, awaited on its port, stopped or killed."""

    def __init__(self, name: str, command: list[str], port: int, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.command, self.port, self.log_path = name, command, port, log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_running()
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen in {timeout_s:.0f} s:\n"
                           f"{tail(self.log_path)}")

    def _check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start:\n{tail(self.log_path)}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a clean shutdown drains the proxy's recorder), SIGKILL if stuck."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()
        return process.returncode if process is not None else None

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process and all its descendants (LiteLLM may fork)."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) / 1024
    return round(total, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and its descendants."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def last_line(text: str) -> str:
    """The last non-empty line; progress bars redraw with \\r, so split on it too."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    return next((line for line in reversed(lines) if line), "")


# -- the proxy -------------------------------------------------------------------

def arm_guidance(mode: str | None, budget_ms: float | None = None,
                 settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A learning-benchmark arm's guidance; ``mode`` None turns it off (the control arm).
    ``settings``: more guidance keys for a guided arm (``guidance_settings``).

    ``holdout: 0`` in a guided arm: the benchmark brings its own control arm, and the
    proxy's holdout episodes would otherwise count as unguided guided-arm tasks.
    """
    if mode is None:
        return {"enabled": False}
    guidance: dict[str, Any] = {**(settings or {}), "enabled": True, "mode": mode,
                                "holdout": 0.0}
    if budget_ms is not None:
        guidance["budget_ms"] = budget_ms
    return guidance


def guidance_settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` command-line items as guidance config keys, each VALUE read as
    YAML (``0.5``, ``false``); ValueError names a malformed one. The proxy's own config
    loader validates the keys and values."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def proxy_config(directory: Path, port: int, upstream: str, guidance: dict[str, Any], *,
                 tokens: bool = True, store: dict[str, Any] | None = None,
                 upstream_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The proxy's YAML config. ``upstream`` is the OpenAI base URL (with ``/v1``).

    ``tokens`` False leaves the outcome webhook and admin routes open, as the overhead
    and fault load generators expect.
    """
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"base_url": upstream, **(upstream_extra or {})},
        "store": {"path": str(directory / "tactician.duckdb"), **(store or {})},
        "guidance": guidance,
        "learner": {"schedule": None},  # benchmarks run the nightly job themselves
        "logging": {"level": "WARNING"},
    }
    if tokens:
        config["outcomes"] = {"token": secrets.token_hex(16)}
        config["admin"] = {"token": secrets.token_hex(16)}
    return config


class ProxyProcess(Service):
    """``python -m proxy --config <generated yaml>``, ready once ``/healthz`` answers."""

    def __init__(self, directory: Path, upstream: str, guidance: dict[str, Any], *,
                 tokens: bool = True, store: dict[str, Any] | None = None,
                 upstream_extra: dict[str, Any] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        port = free_port()
        self.config = proxy_config(directory, port, upstream, guidance, tokens=tokens,
                                   store=store, upstream_extra=upstream_extra)
        self.config_path = directory / "proxy.yaml"
        command = [sys.executable, "-m", "proxy", "--config", str(self.config_path)]
        super().__init__(f"tactician ({directory.name})", command, port,
                         directory / "proxy.log")
        # One keep-alive client: the learning benchmark posts an outcome per task.
        self._http = httpx.Client(timeout=60.0)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), "utf-8")
        deadline = time.monotonic() + timeout_s
        super().start(timeout_s)
        while time.monotonic() < deadline:
            self._check_running()
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz:\n{tail(self.log_path)}")

    def _post(self, path: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = self._http.post(self.url + path, json=body, headers=headers)
        response.raise_for_status()
        return response.json()

    def post_outcome(self, key: str, identifier: str, success: bool) -> None:
        self._post("/v1/outcomes", self.config.get("outcomes", {}).get("token"),
                   {key: identifier, "success": success})

    def snapshot(self) -> Path:
        """A consistent copy of the store, written by the proxy (the one writer)."""
        token = self.config.get("admin", {}).get("token")
        return Path(self._post("/v1/tactician/snapshot", token)["path"])

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the recorder has written everything it was given, spilled rows
        included (so a snapshot holds the whole day); its last ``/healthz`` counters."""
        deadline = time.monotonic() + timeout_s
        recorder: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self._http.get(self.url + "/healthz", timeout=10)
            recorder = response.json().get("recorder", {})
            # An empty queue is not enough: the writer batches rows it has dequeued.
            settled = sum(recorder.get(k, 0) for k in ("written", "dropped", "write_errors"))
            if (recorder.get("queue_depth", 0) == 0 and settled >= recorder.get("enqueued", 0)
                    and recorder.get("replayed", 0) >= recorder.get("spilled", 0)):
                break
            time.sleep(0.1)
        return recorder

    def wait_adapter(self, timeout_s: float = ADAPTER_WAIT_S) -> str | None:
        """Wait until the hint engine serves the adapter the learner last published
        (the proxy polls for it and loads it in the background); the version it serves
        when this returns."""
        current = read_current(load_config(self.config).state_dir)
        serving: str | None = None
        deadline = time.monotonic() + timeout_s
        while True:
            guidance = self._http.get(self.url + "/healthz", timeout=10).json().get(
                "guidance", {})
            serving = guidance.get("adapter_version")
            if (current is None or serving == current.version
                    or guidance.get("mode") == "retrieval" or time.monotonic() > deadline):
                return serving
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        response = self._http.get(self.url + "/v1/tactician/stats")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        code = super().stop(timeout_s)
        self._http.close()
        return code

    def kill(self) -> None:
        super().kill()
        self._http.close()


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
    serving: str | None = None  # the adapter the proxy serves when the next day starts


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
