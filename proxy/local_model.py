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


class LocalModelServer:
    def __init__(self, cfg: LocalModelConfig, model_path: Path | None = None) -> None:
        self.cfg = cfg
        self.model_path = model_path or default_gguf()
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        if not self.model_path.is_file():
            raise ConfigError(f"local_model.model_path: {self.model_path} does not exist")
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.cfg.n_ctx), "--n_threads", str(self.cfg.threads),
            "--model_alias", self.model_path.stem,
        ]
        log.info("starting the embedded local model %s on port %d", self.model_path.name,
                 self.port)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ConfigError("the embedded local model server exited at start-up")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ConfigError("the embedded local model server did not start in time")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
