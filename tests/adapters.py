"""Build and publish small LoRA adapters for tests, in llama.cpp's GGUF adapter format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from learner.export_gguf import BaseShape, export_lora_gguf
from proxy.hints.strategies import Strategy, StrategyCatalog
from proxy.models import default_gguf

HIDDEN, FFN, LAYERS = 576, 1536, 30


def random_adapter(path: Path, seed: int, scale: float = 0.08, rank: int = 4,
                   hidden: int = HIDDEN) -> Path:
    """A random rank-``rank`` LoRA on every MLP: enough to change what the model says.
    Another ``hidden`` makes one that does not fit the base (as if trained on another)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(LAYERS):
        prefix = f"base_model.model.model.layers.{layer}.mlp"
        tensors[f"{prefix}.up_proj.lora_A.weight"] = rng.normal(0, scale, (rank, hidden))
        tensors[f"{prefix}.up_proj.lora_B.weight"] = rng.normal(0, scale, (FFN, rank))
        tensors[f"{prefix}.down_proj.lora_A.weight"] = rng.normal(0, scale, (rank, FFN))
        tensors[f"{prefix}.down_proj.lora_B.weight"] = rng.normal(0, scale, (hidden, rank))
    arrays = {k: v.astype(np.float32) for k, v in tensors.items()}
    return export_lora_gguf(arrays, BaseShape.from_gguf(default_gguf()), float(rank), path)


def catalog(labels: dict[str, str]) -> StrategyCatalog:
    """A catalog whose strategy ``sid`` has the label the model is known to generate."""
    items = [Strategy(sid, f"I used the {sid} method: step by step.", label).__dict__
             for sid, label in labels.items()]
    return StrategyCatalog.from_json(json.dumps(items))


def publish(state_dir: Path, version: str, adapter: Path, cat: StrategyCatalog) -> None:
    """Publish the way the learner does: files first, then an atomic pointer swap."""
    vdir = state_dir / "adapters" / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "adapter.gguf").write_bytes(adapter.read_bytes())
    (vdir / "catalog.json").write_text(cat.to_json())
    pointer = state_dir / "adapters" / "current.json"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "adapter": f"{version}/adapter.gguf",
                               "catalog": f"{version}/catalog.json"}))
    os.replace(tmp, pointer)
