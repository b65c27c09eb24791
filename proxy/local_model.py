"""The embedded default upstream: llama.cpp's OpenAI-compatible server on loopback.

With no upstream configured the proxy still answers at once, offline, from the small
GGUF model that ships in a package. It runs as a child process so that its inference
never competes with the proxy's event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from proxy.config import LocalModelConfig
from proxy.errors import ConfigError
from proxy.models import default_gguf

log = logging.getLogger("tactician.local_model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Restarts back off from 1 s to a minute so a model that cannot start does not spin.
RESTART_BACKOFF_S = (1.0, 60.0)
WATCH_EVERY_S = 1.0
LOG_TAIL_BYTES = 2000


class LocalModelServer:
    """The llama.cpp server child: started, watched, restarted if it dies."""

    def __init__(self, cfg: LocalModelConfig, model_path: Path | None = None,
                 log_path: Path | None = None) -> None:
        self.cfg = cfg
        self.model_path = model_path or default_gguf()
        self.log_path = log_path
        self.port = free_port()
        self.restarts = 0
        self.last_exit: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def status(self) -> dict[str, object]:
        running = self._proc is not None and self._proc.poll() is None
        return {"running": running, "restarts": self.restarts, "last_exit": self.last_exit,
                "model": self.model_path.name}

    def start(self) -> None:
        if not self.model_path.is_file():
            raise ConfigError(f"local_model.model_path: {self.model_path} does not exist")
        self._spawn()
        self._wait_ready()
        self._watcher = threading.Thread(target=self._watch, name="local-model-watch",
                                         daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        cmd = [
            sys.executable, "-m", "proxy.local_child",  # llama_cpp.server, tied to us
            "--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.cfg.n_ctx), "--n_threads", str(self.cfg.threads),
            "--model_alias", self.model_path.stem,
            # Its default cuts a running stream short (a bare [DONE]) whenever another
            # request arrives: a proxy serves many clients at once.
            "--interrupt_requests", "False",
        ]
        log.info("starting the embedded local model %s on port %d", self.model_path.name,
                 self.port)
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
                cmd, stdout=out, stderr=out, env=_child_env())
        finally:
            if not isinstance(out, int):
                out.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ConfigError("the embedded local model server exited at start-up"
                                  + self._log_tail())
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._terminate()
        raise ConfigError("the embedded local model server did not start in time"
                          + self._log_tail())

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace").strip()
        return f" (its log, {self.log_path}, ends: {tail})"

    def _watch(self) -> None:
        """Restart the server if it dies: until then calls get 502s, not a dead proxy."""
        backoff = RESTART_BACKOFF_S[0]
        while not self._stopping.wait(WATCH_EVERY_S):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            self.last_exit = proc.returncode
            log.error("the embedded local model exited with code %s; restarting it",
                      proc.returncode)
            try:
                self._spawn()
                self._wait_ready()
            except ConfigError as exc:
                log.error("restarting the embedded local model failed: %s", exc)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
                continue
            self.restarts += 1
            backoff = RESTART_BACKOFF_S[0]

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        self._terminate()

    def _terminate(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _child_env() -> dict[str, str]:
    """The environment, with this package importable whatever the working directory."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
