"""The small model in llama.cpp: one context, one worker thread, hot-swappable adapter.

A llama.cpp context is not safe for concurrent calls, so every generation runs on a
single worker thread. Swapping an adapter builds a new context on another thread and
replaces the reference between two generations: the old adapter serves until the new
one is ready, and the new context starts with an empty KV cache. llama_cpp is imported
only here, lazily, so it never slows the proxy's start-up or import.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.hints.lag import LagGate
from proxy.hints.prompt import STOP, normalize_label, render
from proxy.hints.strategies import StrategyCatalog

log = logging.getLogger("tactician.hints.llm")


@dataclass(frozen=True)
class Loaded:
    llama: Any
    version: str  # "base" when no adapter is applied
    catalog: StrategyCatalog | None


_LORA_TENSOR = re.compile(r"^blk\.\d+\.[a-z_]+\.weight\.lora_[ab]$")


def tensor_shapes(gguf: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, innermost dimension first (GGUF's order). ~2 s for the
    default model (gguf parses all metadata in Python): read once per process."""
    return _shapes_of(_read_gguf(gguf))


def check_adapter(path: Path, base_shapes: Callable[[], dict[str, tuple[int, ...]]]) -> None:
    """Refuse a file llama.cpp would accept but must not run: llama.cpp loads some
    malformed adapter files, and adapters trained on another base model, without
    complaint and then crashes the process while generating. The file's own checks
    come first, so a broken file is refused before the base's shapes are read."""
    reader = _read_gguf(path)

    def field(key: str) -> str | None:
        f = reader.fields.get(key)
        return str(f.contents()) if f is not None else None

    if field("general.type") != "adapter" or field("adapter.type") != "lora":
        raise ValueError(f"{path.name} is not a GGUF LoRA adapter")
    shapes = _shapes_of(reader)
    if not shapes or not all(_LORA_TENSOR.match(n) for n in shapes):
        raise ValueError(f"{path.name} has no LoRA tensors or unexpected tensor names")
    targets = {n.rsplit(".", 1)[0] for n in shapes}
    if len(shapes) != 2 * len(targets):
        raise ValueError(f"{path.name} has unpaired lora_a/lora_b tensors")
    base = base_shapes()
    for target in sorted(targets):
        a, b = shapes.get(f"{target}.lora_a"), shapes.get(f"{target}.lora_b")
        w = base.get(target)
        # GGUF lists dimensions innermost first: W is (in, out), A (in, r), B (r, out).
        if a is None or b is None or w is None or len(a) != 2 or len(b) != 2 \
                or len(w) != 2 or (a[0], b[1], a[1]) != (w[0], w[1], b[0]):
            raise ValueError(f"{path.name} does not fit the base model at {target} "
                             f"(adapter {a} x {b}, base {w}): was it trained on another?")


def _shapes_of(reader: Any) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}


def _read_gguf(path: Path) -> Any:
    from gguf import GGUFReader  # noqa: PLC0415 - only when an adapter is published

    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise ValueError(f"{path.name} is not a readable GGUF file: {exc}") from exc


class SmallModel:
    def __init__(self, model_path: Path, *, threads: int, max_tokens: int,
                 batch_threads: int | None = None, gate: LagGate | None = None) -> None:
        self.model_path = model_path
        # Generations wait while it is closed (serving comes first); alone, it never is.
        self._gate = gate or LagGate(0)
        self.threads = threads
        # The prompt is evaluated in one batch, which parallelises well and is most of
        # a hint's cost; generating the few label tokens does not.
        self.batch_threads = batch_threads or threads
        self.max_tokens = max_tokens
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="small-model")
        self._loaded: Loaded | None = None
        self._base_shapes: dict[str, tuple[int, ...]] | None = None
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def current(self) -> Loaded | None:
        return self._loaded

    @property
    def pending(self) -> int:
        return self._pending

    def load(self, adapter: Path | None, version: str,
             catalog: StrategyCatalog | None) -> None:
        """Build a context (blocking: call it off the event loop) and swap it in."""
        from llama_cpp import Llama  # noqa: PLC0415 - heavy, off the import path

        if not self.model_path.is_file():
            raise FileNotFoundError(f"small model not found: {self.model_path}")
        if adapter is not None:
            check_adapter(adapter, self._shapes)
        llama = Llama(
            model_path=str(self.model_path),
            lora_path=str(adapter) if adapter else None,
            n_ctx=256, n_batch=64, n_threads=self.threads,
            n_threads_batch=self.batch_threads,
            seed=0, verbose=False,
        )
        with self._lock:
            old, self._loaded = self._loaded, Loaded(llama, version, catalog)
        if old is not None:
            # Closing on the worker thread guarantees no generation still uses it.
            self._worker.submit(old.llama.close)
        log.info("small model ready: %s (adapter %s)", self.model_path.name, version)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        if self._base_shapes is None:
            self._base_shapes = tensor_shapes(self.model_path)
        return self._base_shapes

    def submit(self, task: str) -> Future[tuple[str, str]]:
        """Queue a label generation; the future gives (label, adapter version)."""
        with self._lock:
            self._pending += 1
        return self._worker.submit(self._generate, task)

    def _generate(self, task: str) -> tuple[str, str]:
        try:
            loaded = self._loaded
            if loaded is None:
                raise RuntimeError("small model is not loaded")
            with self._gate.turn():
                return self._label(loaded, task)
        finally:
            with self._lock:
                self._pending -= 1

    def _label(self, loaded: Loaded, task: str) -> tuple[str, str]:
        stream = loaded.llama.create_completion(
            render(task), max_tokens=self.max_tokens, temperature=0.0, top_k=1,
            stop=STOP, stream=True,
        )
        text = ""
        for chunk in stream:
            text += chunk["choices"][0]["text"]
            label = loaded.catalog.completion_of(text) if loaded.catalog else None
            if label is not None:
                stream.close()
                return label, loaded.version
        return normalize_label(text), loaded.version

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.llama.close()
