"""Watches the learner's published adapter and hot-swaps it into the small model.

The learner publishes by atomically replacing ``adapters/current.json``; the watcher
polls it, loads the new adapter on its own thread, and swaps it in between two
generations. A broken adapter is logged and counted and the previous one keeps
serving; the watcher retries when the file changes again (or after ``retry_s``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from proxy.hints.llm import SmallModel
from proxy.hints.strategies import StrategyCatalog

log = logging.getLogger("tactician.hints.adapters")


class AdapterWatcher:
    def __init__(self, state_dir: Path, model: SmallModel, *,
                 poll_s: float, retry_s: float = 30.0) -> None:
        self.adapters = state_dir / "adapters"
        self.model = model
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.failures = 0
        self.last_error: str | None = None
        self._seen: tuple[float, int] | None = None
        self._failed_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adapter-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def status(self) -> dict[str, Any]:
        return {"failures": self.failures, "last_error": self.last_error}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("adapter watcher error")
            self._stop.wait(self.poll_s)

    def check(self) -> bool:
        """Load the published adapter if it changed (or nothing is loaded yet)."""
        pointer = self.adapters / "current.json"
        stamp = _stamp(pointer)
        # A failed load is retried (a file being repaired, a full disk freed), not only
        # when nothing at all is loaded: after a failure the base model serves.
        retry = self.last_error is not None and time.monotonic() - self._failed_at > self.retry_s
        if stamp == self._seen and not retry:
            return False
        self._seen = stamp
        try:
            self._load(pointer if stamp else None)
        except Exception as exc:  # noqa: BLE001 - a bad adapter must not stop serving
            self._failed_at = time.monotonic()
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load adapter: %s", self.last_error)
            if self.model.current is None and stamp is not None:
                self._load(None)  # serve the base model rather than nothing
            return False
        self.last_error = None
        return True

    def _load(self, pointer: Path | None) -> None:
        if pointer is None:
            self.model.load(None, "base", None)
            return
        info = json.loads(pointer.read_text())
        adapter = self.adapters / info["adapter"]
        catalog = StrategyCatalog.from_json((self.adapters / info["catalog"]).read_text())
        self.model.load(adapter, str(info["version"]), catalog)


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime, st.st_ino)
