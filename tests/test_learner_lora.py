"""Real (unmocked) LoRA round trip: CPU training -> GGUF adapter -> llama.cpp.

One short training run on the packaged SmolLM2-135M base is shared by the module.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from learner.basemodel import chat_template_from_gguf, sha256_file
from learner.export_gguf import (
    HF_TO_GGUF_MODULE,
    BaseShape,
    export_lora_gguf,
    permute_qk_rows,
)
from learner.train import (
    Example,
    RunClock,
    TrainResult,
    TrainSettings,
    _collate,
    _encode,
    converged,
    lr_factor,
    render_prompt,
    train_lora,
    weighted_completion_loss,
)
from learner.verify import (
    agreement,
    llama_generate,
    llama_last_logits,
    llama_tokenize,
    llm_last_logits,
    normalize,
    open_llama,
    peft_generate,
    peft_last_logits,
)
from proxy.models import default_gguf

SYSTEM = "You are Tactician. Reply with one short strategy for the task."
TASKS: list[tuple[str, str]] = [
    ("Fix the failing unit test in parser.py", "reproduce the failure first"),
    ("Summarize this 40-page contract", "skim headings then summarize"),
    ("Translate the README into German", "translate section by section"),
    ("Speed up the slow SQL report query", "check the query plan"),
    ("Write a haiku about autumn leaves", "count syllables per line"),
    ("Plan a three-day trip to Kyoto", "group sights by district"),
    ("Find the memory leak in the worker", "profile heap growth"),
    ("Answer the customer's refund email", "apologize then state policy"),
    ("Refactor the 900-line billing module", "extract small functions"),
    ("Estimate the cost of the cloud migration", "list services and price each"),
    ("Debug the flaky login integration test", "rerun with fixed seeds"),
    ("Draft release notes for version 2.3", "group changes by type"),
]
# A constant rate: the export tests' logit tolerances were calibrated on this adapter;
# the decay schedule has its own tests below and runs in the pipeline tests.
SETTINGS = TrainSettings(r=16, alpha=32.0, lr=2e-3, min_lr_ratio=1.0, batch_size=8,
                         max_steps=16, seed=0)
MAX_TOKENS = 16


@dataclass
class Trained:
    base: Path
    prompts: list[str]
    targets: list[str]
    result: TrainResult
    adapter_gguf: Path
    shape: BaseShape


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dequantized checkpoint for the module's training runs (built by the first)."""
    return tmp_path_factory.mktemp("hf-cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, hf_cache: Path) -> Trained:
    base = default_gguf()
    template = chat_template_from_gguf(base)
    prompts = [render_prompt(template, SYSTEM, task) for task, _ in TASKS]
    examples = [Example(p, target) for p, (_, target) in zip(prompts, TASKS, strict=True)]
    out = tmp_path_factory.mktemp("lora")
    result = train_lora(examples, base, out / "peft", replace(SETTINGS, cache_dir=hf_cache))
    shape = BaseShape.from_gguf(base)
    adapter_gguf = export_lora_gguf(result.adapter_dir, shape, None, out / "adapter.gguf")
    return Trained(base, prompts, [t for _, t in TASKS], result, adapter_gguf, shape)


def test_default_base_is_packaged_and_hash_is_cached(tmp_path: Path) -> None:
    base = default_gguf()
    assert base.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and base.is_file()
    expected = hashlib.sha256(base.read_bytes()).hexdigest()
    assert sha256_file(base) == expected
    assert sha256_file(base, tmp_path) == expected
    assert (tmp_path / "sha256-cache.json").is_file()
    assert sha256_file(base, tmp_path) == expected


def test_hf_checkpoint_is_built_once_and_replaces_other_bases(tmp_path: Path) -> None:
    from learner.basemodel import hf_checkpoint_dir

    stale = tmp_path / "hf-0123456789abcdef"  # another base's checkpoint
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    first = hf_checkpoint_dir(default_gguf(), tmp_path)
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert not stale.exists()
    built = (first / "model.safetensors").stat().st_mtime_ns
    assert hf_checkpoint_dir(default_gguf(), tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == built


def test_training_loads_the_checkpoint_bit_identical_to_the_gguf(hf_cache: Path) -> None:
    """The checkpoint stands in for the GGUF in every training run: its weights must be
    the GGUF's own, dequantized, and its tokenizer must render and split prompts as the
    GGUF's does (what llama.cpp serves)."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from learner.basemodel import load_base, load_tokenizer

    load_base(default_gguf(), hf_cache)  # builds the checkpoint unless a test already did
    started = time.monotonic()
    model, tokenizer = load_base(default_gguf(), hf_cache)
    loaded = time.monotonic() - started
    tensors = {t.name: t for t in GGUFReader(default_gguf()).tensors}
    for name, weight in (("token_embd.weight", model.model.embed_tokens.weight),
                         ("blk.3.ffn_down.weight", model.model.layers[3].mlp.down_proj.weight),
                         ("output_norm.weight", model.model.norm.weight)):
        t = tensors[name]
        expected = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type)))
        assert torch.equal(weight.detach(), expected.reshape(weight.shape)), name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    started = time.monotonic()
    original = load_tokenizer(default_gguf())
    # Side by side: the whole checkpoint loads faster than the GGUF's tokenizer alone.
    assert loaded < time.monotonic() - started
    for task in ("Reset the VPN token for a new hire", "naïve café — 東京 ✓"):
        prompt = render_prompt(tokenizer, SYSTEM, task)
        assert prompt == render_prompt(original, SYSTEM, task)
        assert tokenizer(prompt)["input_ids"] == original(prompt)["input_ids"]
    assert tokenizer.eos_token == original.eos_token


def test_permutation_is_inverse_of_transformers_unpermute() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    unpermute = LlamaTensorProcessor()._reverse_permute_weights
    for rows, n_kv in ((576, 9), (192, 3)):  # q: 9 heads; k: 3 kv heads of 64 dims
        lora_b = rng.standard_normal((rows, 16)).astype(np.float32)
        permuted = permute_qk_rows(lora_b, 9, n_kv)
        assert not np.array_equal(permuted, lora_b)
        np.testing.assert_array_equal(unpermute(permuted, 9, n_kv), lora_b)


def test_prompt_rendering_matches_tokenizer_and_llama_tokens(trained: Trained) -> None:
    tokenizer = trained.result.tokenizer
    llm = open_llama(trained.base, None)
    for prompt, (task, _) in zip(trained.prompts, TASKS, strict=True):
        assert render_prompt(tokenizer, SYSTEM, task) == prompt
        assert prompt.endswith("<|im_start|>assistant\n")
        hf_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert llama_tokenize(llm, prompt) == hf_ids


def test_loss_masks_prompt_and_scales_with_weight(trained: Trained) -> None:
    import torch

    model, tokenizer = trained.result.model, trained.result.tokenizer
    examples = [
        Example(p, t) for p, t in zip(trained.prompts[:2], trained.targets[:2], strict=True)
    ]
    rows = _encode(examples, tokenizer, 512)
    batch = _collate(rows, tokenizer.pad_token_id, torch.device("cpu"))
    completion_len = len(tokenizer(trained.targets[0] + tokenizer.eos_token)["input_ids"])
    assert int((batch["labels"][0] != -100).sum()) == completion_len
    with torch.no_grad():
        one = weighted_completion_loss(model, batch, torch.tensor([1.0, 1.0]))
        two = weighted_completion_loss(model, batch, torch.tensor([2.0, 2.0]))
        zero = weighted_completion_loss(model, batch, torch.tensor([0.0, 0.0]))
    assert float(zero) == 0.0
    assert float(two) == pytest.approx(2 * float(one), rel=1e-5)


def test_training_moves_greedy_output_to_targets(trained: Trained) -> None:
    result = trained.result
    assert result.backend == "cpu" and result.steps == SETTINGS.max_steps
    assert result.stop_reason == "steps"
    assert result.losses[-1] < result.losses[0] / 20
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    outputs = [
        peft_generate(result.model, result.tokenizer, p, MAX_TOKENS) for p in trained.prompts
    ]
    hits = sum(normalize(o) == t for o, t in zip(outputs, trained.targets, strict=True))
    assert hits >= 0.9 * len(TASKS), outputs
    with result.model.disable_adapter():
        base_out = peft_generate(result.model, result.tokenizer, trained.prompts[0], MAX_TOKENS)
    assert normalize(base_out) != trained.targets[0]


def test_a_guess_is_checked_in_one_pass_and_decoded_only_when_wrong(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = trained.result.model, trained.result.tokenizer
    plain = [peft_generate(model, tok, p, MAX_TOKENS) for p in trained.prompts[:4]]
    with model.disable_adapter():  # the base runs on to the token limit: no end token
        long = peft_generate(model, tok, trained.prompts[0], MAX_TOKENS)
    assert len(tok(long, add_special_tokens=False)["input_ids"]) == MAX_TOKENS
    decoded = 0
    generate = model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal decoded
        decoded += 1
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    for prompt, right in zip(trained.prompts, plain, strict=False):
        assert peft_generate(model, tok, prompt, MAX_TOKENS, guess=right) == right
    with model.disable_adapter():
        assert peft_generate(model, tok, trained.prompts[0], MAX_TOKENS, guess=long) == long
    assert decoded == 0  # right guesses: checked, never decoded
    wrong = [plain[1], plain[0] + " and more", plain[0].split()[0], long[:-3]]
    for guess in wrong:  # another task's answer, one too long, one cut short
        assert peft_generate(model, tok, trained.prompts[0], MAX_TOKENS, guess=guess) == plain[0]
    assert decoded == len(wrong)


def test_gguf_metadata_and_tensor_names(trained: Trained) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(trained.adapter_gguf))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(SETTINGS.alpha)
    expected = {
        f"blk.{i}.{m}.weight.lora_{ab}"
        for i in range(trained.shape.n_layers)
        for m in HF_TO_GGUF_MODULE.values()
        for ab in "ab"
    }
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected
    base_shapes = {t.name: list(t.shape) for t in GGUFReader(str(trained.base)).tensors}
    for name, tensor in tensors.items():
        if not name.endswith("lora_a"):
            continue
        a, b = list(tensor.shape), list(tensors[name[:-1] + "b"].shape)
        base_ne = base_shapes[name.removesuffix(".lora_a")]
        # ggml order (ne0 = row length): A is [n_in, r], B is [r, n_out].
        assert a[0] == base_ne[0] and b[1] == base_ne[1] and a[1] == b[0] == SETTINGS.r
        assert tensor.tensor_type.name == "F32"


def test_export_from_state_dict_matches_export_from_dir(trained: Trained, tmp_path: Path) -> None:
    from gguf import GGUFReader
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(trained.result.model, save_embedding_layers=False)
    from_dict = export_lora_gguf(state, trained.shape, SETTINGS.alpha, tmp_path / "a.gguf")
    ref = {t.name: np.array(t.data) for t in GGUFReader(str(trained.adapter_gguf)).tensors}
    got = {t.name: np.array(t.data) for t in GGUFReader(str(from_dict)).tensors}
    assert ref.keys() == got.keys()
    for name, value in ref.items():
        np.testing.assert_array_equal(value, got[name])
    assert not list(tmp_path.glob(".*.tmp"))


def test_llama_cpp_with_adapter_changes_output_and_agrees(trained: Trained) -> None:
    prompt, target = trained.prompts[0], trained.targets[0]
    assert normalize(llama_generate(trained.base, None, prompt, MAX_TOKENS)) != target
    assert (
        normalize(llama_generate(trained.base, trained.adapter_gguf, prompt, MAX_TOKENS)) == target
    )
    score = agreement(
        trained.base,
        trained.adapter_gguf,
        trained.result.model,
        trained.prompts,
        MAX_TOKENS,
        trained.result.tokenizer,
    )
    assert score >= 0.9


def _mean_abs(a: Any, b: Any) -> float:
    return float(np.abs(a - b).mean())


def test_qk_permutation_is_needed(trained: Trained, tmp_path: Path) -> None:
    """Greedy text survives a wrong q/k layout on this strongly-trained adapter, so
    compare next-token logits against PEFT: permuted sits at llama.cpp's quantization
    noise floor (base vs base), unpermuted is several times off."""
    model, tokenizer = trained.result.model, trained.result.tokenizer
    unpermuted = export_lora_gguf(
        trained.result.adapter_dir, trained.shape, None, tmp_path / "u.gguf", permute_qk=False
    )
    llms = [
        open_llama(trained.base, adapter, logits_all=True)
        for adapter in (None, trained.adapter_gguf, unpermuted)
    ]
    noise, good, bad = [], [], []
    for prompt in trained.prompts[:3]:
        with model.disable_adapter():
            hf_base = peft_last_logits(model, tokenizer, prompt)
        hf_lora = peft_last_logits(model, tokenizer, prompt)
        base_cpp, good_cpp, bad_cpp = (llm_last_logits(llm, prompt) for llm in llms)
        noise.append(_mean_abs(hf_base, base_cpp))
        good.append(_mean_abs(hf_lora, good_cpp))
        bad.append(_mean_abs(hf_lora, bad_cpp))
    # Single-call path agrees with the reused instances.
    np.testing.assert_allclose(
        llama_last_logits(trained.base, None, trained.prompts[0]),
        llm_last_logits(llms[0], trained.prompts[0]),
        atol=1e-4,
    )
    assert np.mean(good) < 2 * np.mean(noise)
    assert np.mean(bad) > 3 * np.mean(good)


def test_time_budget_stops_after_current_step(tmp_path: Path, hf_cache: Path) -> None:
    base = default_gguf()
    prompt = render_prompt(chat_template_from_gguf(base), SYSTEM, TASKS[0][0])
    settings = TrainSettings(max_steps=50, max_seconds=0.0, progress=False, cache_dir=hf_cache)
    result = train_lora([Example(prompt, TASKS[0][1], 2.0)], base, tmp_path / "peft", settings)
    assert result.steps == 1 and result.stop_reason == "time"
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_converged_loss_stops_training(tmp_path: Path, hf_cache: Path) -> None:
    base = default_gguf()
    prompt = render_prompt(chat_template_from_gguf(base), SYSTEM, TASKS[0][0])
    # Any loss is "converged" below 1e6: the run must stop once the window is full.
    settings = TrainSettings(max_steps=50, converge_loss=1e6, converge_window=3, progress=False,
                             cache_dir=hf_cache)
    result = train_lora([Example(prompt, TASKS[0][1])], base, tmp_path / "peft", settings)
    assert result.steps == 3 and result.stop_reason == "converged"


def test_threads_can_change_between_steps(tmp_path: Path, hf_cache: Path) -> None:
    """The nightly job asks before every step how many threads it may use (more while
    the proxy is idle); the run follows and says how many steps ran on each count."""
    import torch

    base = default_gguf()
    prompt = render_prompt(chat_template_from_gguf(base), SYSTEM, TASKS[0][0])
    plan = iter([1, 1, 2, 2, 1])
    seen: list[int] = []
    settings = TrainSettings(max_steps=5, num_threads=1, progress=False, cache_dir=hf_cache)
    before = torch.get_num_threads()
    try:
        result = train_lora([Example(prompt, TASKS[0][1])], base, tmp_path / "peft", settings,
                            threads=lambda: seen.append(torch.get_num_threads()) or next(plan))
    finally:
        torch.set_num_threads(before)
    assert result.steps == 5 and result.steps_by_threads == {1: 3, 2: 2}
    assert seen == [1, 1, 1, 2, 2]  # each step ran on what was asked just before it


def test_convergence_needs_a_whole_epoch_and_a_low_mean_loss() -> None:
    settings = TrainSettings(converge_loss=0.02, converge_window=5)
    fitted = [0.9, 0.002, 0.001, 0.03, 0.001, 0.04]  # the window is the last five
    assert converged(fitted, settings, epoch_steps=6)
    assert not converged(fitted, settings, epoch_steps=7)  # not every example seen yet
    assert not converged([*fitted, 0.2], settings, epoch_steps=6)  # one spike: mean 0.055
    assert not converged(fitted, TrainSettings(converge_loss=None), epoch_steps=0)


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    settings = TrainSettings(lr=1e-3, min_lr_ratio=0.1, warmup_steps=4)
    warm = [lr_factor(s, 0.0, settings) for s in range(4)]
    assert warm == sorted(warm) and warm[0] < 0.5 and warm[-1] < 1.0
    decay = [lr_factor(10, p / 10, settings) for p in range(11)]
    assert decay[0] == pytest.approx(1.0) and decay[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert lr_factor(10, 3.0, settings) == pytest.approx(0.1)  # past the end: stays at floor


def test_progress_is_the_larger_of_steps_and_time() -> None:
    started = time.monotonic() - 30.0
    assert RunClock(100, started, None).progress(25) == pytest.approx(0.25)
    timed = RunClock(100, started, 60.0)
    assert timed.progress(10) == pytest.approx(0.5, abs=0.05) and not timed.out_of_time()
    assert timed.progress(90) == pytest.approx(0.9)
    assert RunClock(100, started, 20.0).out_of_time()
