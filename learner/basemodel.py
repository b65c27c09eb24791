"""Fingerprint and load the base hint model (a llama-architecture GGUF).

Heavy libraries (torch, transformers, peft, gguf, llama_cpp) are imported inside functions
so that importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_HASH_CACHE_FILE = "sha256-cache.json"
_CHUNK = 1 << 20


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


def _read_cache(cache_file: Path) -> dict[str, str]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_json_atomic(target: Path, payload: dict[str, str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path, cache_dir: Path | None = None) -> str:
    """Hex sha256 of ``path``.

    With ``cache_dir`` the digest is memoised on disk keyed by resolved path, mtime and
    size, so repeated learner runs (separate processes) skip re-reading the base model.
    """
    if cache_dir is None:
        return _hash_file(path)
    key = _cache_key(path)
    cache_file = cache_dir / _HASH_CACHE_FILE
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key]
    digest = _hash_file(path)
    cache[key] = digest
    _write_json_atomic(cache_file, cache)
    return digest


def clear_quantizer_flags(model: Any) -> Any:
    """Make a GGUF-loaded (already dequantized) model look like a plain float model.

    transformers keeps the GGUF quantizer attached, and Trainer, PEFT and
    ``save_pretrained`` refuse quantized models even though the weights are plain floats.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_tokenizer(gguf_path: Path) -> Any:
    """HF tokenizer (with chat template) rebuilt from the GGUF's tokenizer metadata."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def load_hf_model(gguf_path: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a GGUF: weights dequantized, quantizer flags cleared.

    transformers also undoes llama.cpp's Q/K row permutation while loading, so the model
    is in HF layout; ``learner.export_gguf`` re-applies it to the adapter.
    """
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
    )
    return clear_quantizer_flags(model), load_tokenizer(gguf_path)


def hf_checkpoint_dir(gguf_path: Path, cache_root: Path) -> Path:
    """Materialise the GGUF's dequantized weights as a regular HF checkpoint directory.

    Backends that cannot read GGUF (Unsloth) load this directory, so they train on exactly
    the weights the CPU path and llama.cpp use. Keyed by the GGUF's sha256, built once;
    building it removes the checkpoints of other bases (one base is served at a time).
    """
    cache_root.mkdir(parents=True, exist_ok=True)
    digest = sha256_file(gguf_path, cache_root)
    target = cache_root / f"hf-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    for stale in cache_root.glob("hf-*"):
        shutil.rmtree(stale, ignore_errors=True)
    model, tokenizer = load_hf_model(gguf_path)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".hf-staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # A leftover without config.json is an interrupted build: replace it.
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_base(gguf_path: Path, cache_root: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for training, from the GGUF's dequantized checkpoint.

    Reading the GGUF itself costs ~40 s every run on a 2-core CPU (the tokenizer rebuilt
    from its vocabulary, the tensors read and dequantized in Python); the checkpoint,
    built on first use and bit-identical, loads in under a second.
    """
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    checkpoint = hf_checkpoint_dir(gguf_path, cache_root)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(checkpoint))


def chat_template_from_gguf(gguf_path: Path) -> str:
    """The GGUF's ``tokenizer.chat_template`` (cheap: reads metadata, no transformers)."""
    from gguf import GGUFReader  # noqa: PLC0415

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    if field is None:
        raise ValueError(f"{gguf_path} has no tokenizer.chat_template")
    return str(field.contents())
