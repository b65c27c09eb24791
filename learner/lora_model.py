"""The model training updates: the base with LoRA layers, PEFT on CPU or Unsloth on CUDA,
fresh or starting from a saved adapter's weights (a continued nightly run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learner.basemodel import hf_checkpoint_dir, load_base

if TYPE_CHECKING:
    from learner.train import TrainSettings


def load_trainable(base_gguf: Path, out_dir: Path, settings: TrainSettings,
                   init: Path | None) -> tuple[Any, Any, str]:
    """(model, tokenizer, backend), the LoRA weights fresh or loaded from ``init``."""
    backend = choose_backend(settings.backend)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(base_gguf, out_dir, settings)
    else:
        model, tokenizer = _load_cpu(base_gguf, out_dir, settings)
    if init is not None:
        _load_adapter_weights(model, init)
    return model, tokenizer, backend


def choose_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch  # noqa: PLC0415

    if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    return "cpu"


def _lora_kwargs(settings: TrainSettings) -> dict[str, Any]:
    return {
        "r": settings.r,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": list(settings.target_modules),
        "bias": "none",
        "use_rslora": False,
    }


def _load_cpu(base_gguf: Path, out_dir: Path, settings: TrainSettings) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415

    model, tokenizer = load_base(base_gguf, _cache_root(out_dir, settings))
    config = LoraConfig(task_type="CAUSAL_LM", **_lora_kwargs(settings))
    return get_peft_model(model, config), tokenizer


def _load_unsloth(base_gguf: Path, out_dir: Path, settings: TrainSettings) -> tuple[Any, Any]:
    """Unsloth cannot read GGUF, so it loads the GGUF's own dequantized weights saved as an
    HF checkpoint (``hf_checkpoint_dir``), unquantized: the same base llama.cpp serves."""
    from unsloth import FastLanguageModel  # noqa: PLC0415

    checkpoint = hf_checkpoint_dir(base_gguf, _cache_root(out_dir, settings))
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(checkpoint),
        max_seq_length=settings.max_length,
        dtype=None,
        load_in_4bit=False,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        random_state=settings.seed,
        use_gradient_checkpointing=False,
        **_lora_kwargs(settings),
    )
    return model, tokenizer


def _cache_root(out_dir: Path, settings: TrainSettings) -> Path:
    return settings.cache_dir or out_dir.parent / "hf-base"


class AdapterMismatch(ValueError):
    """A saved adapter that this run cannot start from (unreadable or another shape)."""


def _load_adapter_weights(model: Any, folder: Path) -> None:
    """Overwrite the fresh LoRA weights with a saved adapter's; every LoRA tensor must
    be there, or training would silently start half from scratch."""
    from peft import set_peft_model_state_dict  # noqa: PLC0415
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        state = load_file(str(folder / "adapter_model.safetensors"))
        result: Any = set_peft_model_state_dict(model, state)  # torch's _IncompatibleKeys
    except (OSError, RuntimeError, SafetensorError) as exc:  # unreadable, or wrong shapes
        raise AdapterMismatch(f"cannot start from the adapter in {folder}: {exc}") from exc
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise AdapterMismatch(f"adapter in {folder} does not fit: {len(missing)} LoRA "
                              f"tensors missing, {len(result.unexpected_keys)} unexpected")
