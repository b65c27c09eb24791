"""The Unsloth (CUDA) training backend, for real: train -> GGUF adapter -> llama.cpp.

Skipped where there is no CUDA device or no ``unsloth`` (CI, the CPU install): the
backend needs both. On a CUDA machine with requirements-cuda.txt installed it checks
that the adapter Unsloth trains is the same kind of adapter the CPU path makes: it
exports, llama.cpp loads it on the quantized base and then says what the trained model
says.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from learner.basemodel import chat_template_from_gguf
from learner.export_gguf import BaseShape, export_lora_gguf
from learner.train import Example, TrainSettings, render_prompt, train_lora
from learner.verify import agreement, llama_generate, normalize, peft_generate
from proxy.models import default_gguf
from tests.test_learner_lora import SYSTEM, TASKS


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


pytestmark = pytest.mark.skipif(
    not _cuda() or importlib.util.find_spec("unsloth") is None,
    reason="the Unsloth backend needs a CUDA device and the unsloth package",
)

SETTINGS = TrainSettings(r=16, alpha=32.0, lr=2e-3, min_lr_ratio=1.0, batch_size=8,
                         max_steps=40, seed=0, backend="unsloth", progress=False)
MAX_TOKENS = 16


def test_unsloth_adapter_trains_exports_and_agrees_in_llama_cpp(tmp_path: Path) -> None:
    base = default_gguf()
    template = chat_template_from_gguf(base)
    prompts = [render_prompt(template, SYSTEM, task) for task, _ in TASKS]
    targets = [target for _, target in TASKS]
    examples = [Example(p, t) for p, t in zip(prompts, targets, strict=True)]
    settings = replace(SETTINGS, cache_dir=tmp_path / "hf-base")

    result = train_lora(examples, base, tmp_path / "peft", settings)
    losses = f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.4f}"
    assert result.backend == "unsloth", result.backend
    assert result.steps == SETTINGS.max_steps, (result.steps, result.stop_reason)
    assert next(result.model.parameters()).is_cuda
    assert result.losses[-1] < 0.2 * result.losses[0], losses

    trained = [normalize(peft_generate(result.model, result.tokenizer, p, MAX_TOKENS))
               for p in prompts]
    hits = sum(t == g for t, g in zip(targets, trained, strict=True))
    assert hits >= 10, (losses, list(zip(targets, trained, strict=True)))

    adapter = export_lora_gguf(result.adapter_dir, BaseShape.from_gguf(base), None,
                               tmp_path / "adapter.gguf")
    # The same check the nightly job gates on: llama.cpp on the quantized base with the
    # exported adapter says what the trained model says.
    agree = agreement(base, adapter, result.model, prompts, MAX_TOKENS,
                      tokenizer=result.tokenizer)
    served = [normalize(llama_generate(base, adapter, p, MAX_TOKENS)) for p in prompts]
    assert agree >= 0.9, list(zip(trained, served, strict=True))
    assert served[0] != normalize(llama_generate(base, None, prompts[0], MAX_TOKENS))
