"""Check that llama.cpp + exported GGUF adapter behaves like the trained PEFT model.

Heavy libraries (torch, transformers, peft, gguf, llama_cpp) are imported inside functions
so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from learner.basemodel import load_hf_model, load_tokenizer

N_CTX = 512
N_THREADS = 2


def open_llama(base_gguf: Path, adapter_gguf: Path | None, *, logits_all: bool = False,
               threads: int = N_THREADS) -> Any:
    """A CPU llama.cpp instance with the settings the proxy uses (plus optional logits)."""
    from llama_cpp import Llama  # noqa: PLC0415

    return Llama(
        model_path=str(base_gguf),
        lora_path=str(adapter_gguf) if adapter_gguf is not None else None,
        n_ctx=N_CTX,
        n_threads=threads,
        verbose=False,
        seed=0,
        logits_all=logits_all,
    )


def complete(llm: Any, prompt: str, max_tokens: int) -> str:
    # Raw completion on the pre-rendered prompt; llama.cpp stops at end-of-generation tokens.
    out = llm(prompt, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0)
    return str(out["choices"][0]["text"])


def llama_generate(base_gguf: Path, adapter_gguf: Path | None, prompt: str, max_tokens: int) -> str:
    """Greedy raw completion of ``prompt`` with llama.cpp (optionally with a LoRA adapter)."""
    return complete(open_llama(base_gguf, adapter_gguf), prompt, max_tokens)


def llama_tokenize(llm: Any, prompt: str) -> list[int]:
    """Token ids llama.cpp's completion API feeds for ``prompt`` (special tokens parsed)."""
    return [int(t) for t in llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)]


def llm_last_logits(llm: Any, prompt: str) -> npt.NDArray[np.float32]:
    """Next-token logits after ``prompt`` from an ``open_llama(..., logits_all=True)``."""
    llm.reset()
    llm.eval(llama_tokenize(llm, prompt))
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def llama_last_logits(
    base_gguf: Path, adapter_gguf: Path | None, prompt: str
) -> npt.NDArray[np.float32]:
    """Next-token logits after ``prompt`` from llama.cpp."""
    return llm_last_logits(open_llama(base_gguf, adapter_gguf, logits_all=True), prompt)


def peft_generate(model: Any, tokenizer: Any, prompt: str, max_tokens: int,
                  guess: str | None = None) -> str:
    """Greedy completion with a transformers/PEFT model, special tokens stripped.

    ``guess``, another engine's greedy completion of the same prompt (llama.cpp's with
    the exported adapter), is checked in one forward pass instead of decoded token by
    token (~90 ms a token on one CPU thread, each reading every weight): greedy decoding
    yields a sequence exactly when each of its tokens is the argmax after those before
    it, and the end token after the last if it stopped early. A wrong guess is decoded.
    """
    import torch  # noqa: PLC0415

    enc = _encode_on(model, tokenizer, prompt)
    if guess is not None:
        ids = _greedy_yields(model, tokenizer, enc["input_ids"], guess, max_tokens)
        if ids is not None:
            return str(tokenizer.decode(ids, skip_special_tokens=True))
    with torch.no_grad():
        out = model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def _greedy_yields(model: Any, tokenizer: Any, prompt_ids: Any, guess: str,
                   max_tokens: int) -> list[int] | None:
    """The guess's token ids if greedy decoding after ``prompt_ids`` yields them."""
    import torch  # noqa: PLC0415

    ids = [int(t) for t in tokenizer(guess, add_special_tokens=False)["input_ids"]]
    eos = tokenizer.eos_token_id
    if eos is None or len(ids) > max_tokens or eos in ids:  # (it would stop sooner)
        return None
    expected = [*ids, eos] if len(ids) < max_tokens else ids
    tail = torch.tensor([ids], dtype=prompt_ids.dtype, device=prompt_ids.device)
    with torch.no_grad():  # only the positions that predict the guess's tokens
        logits = model(input_ids=torch.cat([prompt_ids, tail], dim=1),
                       logits_to_keep=len(ids) + 1).logits[0]
    return ids if logits[: len(expected)].argmax(-1).tolist() == expected else None


def peft_last_logits(model: Any, tokenizer: Any, prompt: str) -> npt.NDArray[np.float32]:
    """Next-token logits after ``prompt`` from a transformers/PEFT model."""
    import torch  # noqa: PLC0415

    enc = _encode_on(model, tokenizer, prompt)
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
    return np.asarray(logits.float().cpu().numpy(), dtype=np.float32)


def _encode_on(model: Any, tokenizer: Any, prompt: str) -> dict[str, Any]:
    """The prompt's token ids on the model's device (the GPU after an Unsloth run)."""
    device = next(model.parameters()).device
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    return {key: value.to(device) for key, value in enc.items()}


def normalize(text: str) -> str:
    """Comparison form of a hint: first non-blank line, stripped, lowercased."""
    lines = text.strip().splitlines()
    return lines[0].strip().lower() if lines else ""


def load_peft(base_gguf: Path, adapter_dir: Path) -> tuple[Any, Any]:
    """``(PeftModel, tokenizer)`` from the base GGUF and a saved PEFT adapter dir."""
    from peft import PeftModel  # noqa: PLC0415

    model, tokenizer = load_hf_model(base_gguf)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), tokenizer


def agreement(
    base_gguf: Path,
    adapter_gguf: Path,
    peft_model_or_dir: Any,
    prompts: Sequence[str],
    max_tokens: int,
    tokenizer: Any = None,
) -> float:
    """Fraction of rendered ``prompts`` on which greedy PEFT output equals llama.cpp's.

    ``peft_model_or_dir`` is an in-memory PeftModel (then ``tokenizer`` defaults to one
    rebuilt from the GGUF) or a saved adapter directory.
    """
    if not prompts:
        raise ValueError("no prompts")
    if isinstance(peft_model_or_dir, (str, Path)):
        model, tokenizer = load_peft(base_gguf, Path(peft_model_or_dir))
    else:
        model = peft_model_or_dir.eval()
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(base_gguf)
    llm = open_llama(base_gguf, adapter_gguf)
    same = 0
    for prompt in prompts:
        ours = complete(llm, prompt, max_tokens)
        theirs = peft_generate(model, tokenizer, prompt, max_tokens, guess=ours)
        same += normalize(theirs) == normalize(ours)
    return same / len(prompts)
