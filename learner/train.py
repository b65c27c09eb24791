"""LoRA fine-tuning of the base hint model: Unsloth on CUDA, PEFT + plain torch on CPU.

Heavy libraries (torch, transformers, peft, gguf, llama_cpp) are imported inside functions
so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tqdm.auto import tqdm

DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
IGNORE_INDEX = -100
StopReason = Literal["steps", "time", "converged"]


@dataclass(frozen=True)
class Example:
    """One training pair; the loss covers only ``completion`` (plus end-of-turn).

    ``prompt`` is the fully rendered prompt string (see ``render_prompt``).
    """

    prompt: str
    completion: str
    weight: float = 1.0


@dataclass(frozen=True)
class TrainSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    lr: float = 1e-3
    # Cosine decay from lr to lr * min_lr_ratio over the run (steps or time, whichever
    # runs out first). A constant rate kept stepping at full size after the loss had
    # flattened and spiked late (nightly adapters scoring 0 held-out).
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # Stop once every example has been seen and the mean loss over the last
    # ``converge_window`` steps is below this: the completions (strategy names) are
    # fitted. The median stopped sooner but cost accuracy on older (down-weighted) tasks.
    converge_loss: float | None = None
    converge_window: int = 25
    batch_size: int = 8
    epochs: int = 1
    # When set, overrides epochs: cycle over reshuffled epochs until this many steps.
    max_steps: int | None = None
    # Wall-clock budget for the whole call (model load included); checked after each step.
    max_seconds: float | None = None
    max_length: int = 512
    seed: int = 0
    num_threads: int = 2
    backend: Literal["auto", "cpu", "unsloth"] = "auto"
    # Where the dequantized HF checkpoint both backends load is kept; default beside out_dir.
    cache_dir: Path | None = None
    progress: bool = True


@dataclass
class TrainResult:
    adapter_dir: Path
    model: Any  # the trained PeftModel, in eval mode
    tokenizer: Any
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    backend: str = "cpu"
    stop_reason: StopReason = "steps"
    steps_by_threads: dict[int, int] = field(default_factory=dict)


def render_prompt(tokenizer_or_template: Any, system: str, user: str) -> str:
    """The exact prompt string fed to llama.cpp (raw completion) and used for training.

    Accepts an HF tokenizer or a raw Jinja chat template (e.g. from
    ``basemodel.chat_template_from_gguf``); ends with the assistant generation prompt.
    """
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
    ]
    if isinstance(tokenizer_or_template, str):
        return _render_template(tokenizer_or_template, messages)
    rendered = tokenizer_or_template.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    return str(rendered)


def _render_template(template: str, messages: list[dict[str, str]]) -> str:
    # Same environment options transformers uses, so both paths render identically.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def _encode(
    examples: Sequence[Example], tokenizer: Any, max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids per example plus the index where the completion starts.

    Prompt and completion are tokenized separately so the prompt tokens match what
    llama.cpp produces for the prompt alone; the end-of-turn token is appended so the
    model learns to stop.
    """
    eos = str(tokenizer.eos_token)
    encoded = []
    for ex in examples:
        completion = ex.completion if ex.completion.endswith(eos) else ex.completion + eos
        prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = (list(prompt_ids) + list(target_ids))[-max_length:]
        start = max(len(ids) - len(target_ids), 0)
        encoded.append((ids, start))
    return encoded


def _collate(rows: Sequence[tuple[list[int], int]], pad_id: int, device: Any) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, start : len(ids)] = torch.tensor(ids[start:])
        mask[i, : len(ids)] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def weighted_completion_loss(model: Any, batch: dict[str, Any], weights: Any) -> Any:
    """Mean over the batch of weight * (mean token cross-entropy on the completion).

    The vocabulary projection runs only on completion positions: on a 135M model the
    49k-wide head is a large share of the compute and prompt logits are never used.
    """
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    base = model.get_base_model()
    hidden = base.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    # Position t predicts token t+1.
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = base.lm_head(hidden[:, :-1][keep]).float()
    token_loss = F.cross_entropy(logits, targets[keep], reduction="none")
    row = keep.nonzero()[:, 0]
    per_example = torch.zeros(keep.shape[0], device=token_loss.device).index_add(0, row, token_loss)
    per_example = per_example / keep.sum(dim=1).clamp(min=1)
    return (per_example * weights).mean()


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _total_steps(n: int, settings: TrainSettings) -> int:
    if settings.max_steps is not None:
        return settings.max_steps
    return settings.epochs * steps_per_epoch(n, settings.batch_size)


def _optimizer(params: list[Any], settings: TrainSettings) -> Any:
    import torch  # noqa: PLC0415

    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def lr_factor(step: int, progress: float, settings: TrainSettings) -> float:
    """Multiplier on ``settings.lr`` for ``step`` (0-based) at ``progress`` in [0, 1].

    Linear warm-up, then cosine decay to ``min_lr_ratio``. Progress is passed in rather
    than derived from the step so a time-bounded run decays over the steps it will
    actually get, not over a plan it will never finish.
    """
    if step < settings.warmup_steps:
        return (step + 1) / (settings.warmup_steps + 1)
    floor = settings.min_lr_ratio
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return floor + (1.0 - floor) * cosine


@dataclass
class RunClock:
    """How far a run is: the larger of its share of steps and its share of time."""

    total_steps: int
    loop_started: float
    seconds: float | None  # training seconds available to the loop, if time-bounded

    def progress(self, step: int) -> float:
        by_steps = step / max(self.total_steps, 1)
        if self.seconds is None:
            return by_steps
        by_time = (time.monotonic() - self.loop_started) / max(self.seconds, 1e-9)
        return max(by_steps, by_time)

    def out_of_time(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.loop_started >= self.seconds


def converged(losses: Sequence[float], settings: TrainSettings, epoch_steps: int) -> bool:
    window = settings.converge_window
    if settings.converge_loss is None or len(losses) < max(window, epoch_steps):
        return False
    return sum(losses[-window:]) / window < settings.converge_loss


def _run_loop(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: TrainSettings,
    started: float,
    threads: Callable[[], int] | None,
) -> tuple[list[float], StopReason, Counter[int]]:
    import torch  # noqa: PLC0415

    device = next(model.parameters()).device
    rows = _encode(examples, tokenizer, settings.max_length)
    weights = torch.tensor([ex.weight for ex in examples], dtype=torch.float32, device=device)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, settings)
    total = _total_steps(len(examples), settings)
    epoch_steps = steps_per_epoch(len(examples), settings.batch_size)
    now = time.monotonic()
    left = None if settings.max_seconds is None else settings.max_seconds - (now - started)
    clock = RunClock(total, now, left)
    losses: list[float] = []
    by_threads: Counter[int] = Counter()
    stop_reason: StopReason = "steps"
    model.train()
    batches = _batches(len(examples), settings.batch_size, settings.seed)
    with tqdm(total=total, desc="lora", disable=not settings.progress) as bar:
        for step in range(total):
            for group in opt.param_groups:
                group["lr"] = settings.lr * lr_factor(step, clock.progress(step), settings)
            if threads is not None and (n := threads()) != torch.get_num_threads():
                torch.set_num_threads(n)
            by_threads[torch.get_num_threads()] += 1
            idx = next(batches)
            loss = weighted_completion_loss(
                model, _collate([rows[i] for i in idx], pad_id, device), weights[idx]
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if converged(losses, settings, epoch_steps):
                stop_reason = "converged"
                break
            if clock.out_of_time():
                stop_reason = "time"
                break
    model.eval()
    return losses, stop_reason, by_threads


def train_lora(
    examples: Sequence[Example], base_gguf: Path, out_dir: Path, settings: TrainSettings,
    init: Path | None = None, threads: Callable[[], int] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``examples`` and save it (PEFT format) to ``out_dir``,
    starting from the PEFT adapter in ``init`` (same shape) when given. ``threads``,
    asked before every step, may change the CPU threads the run uses as it goes.

    Always takes at least one step; stops early (after the running step) once
    ``settings.max_seconds`` has elapsed or the loss has converged, keeping what was
    learned.
    """
    import torch  # noqa: PLC0415

    if not examples:
        raise ValueError("no training examples")
    started = time.monotonic()
    torch.set_num_threads(max(1, settings.num_threads))
    torch.manual_seed(settings.seed)
    from learner.lora_model import load_trainable  # noqa: PLC0415 - imports peft, torch

    model, tokenizer, backend = load_trainable(base_gguf, out_dir, settings, init)
    load_seconds = time.monotonic() - started
    losses, stop_reason, by_threads = _run_loop(model, tokenizer, examples, settings, started,
                                                threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Explicit False: "auto" probes the Hugging Face Hub for the base config.
    model.save_pretrained(str(out_dir), save_embedding_layers=False)
    return TrainResult(
        adapter_dir=out_dir,
        model=model,
        tokenizer=tokenizer,
        losses=losses,
        steps=len(losses),
        seconds=time.monotonic() - started,
        load_seconds=load_seconds,
        backend=backend,
        stop_reason=stop_reason,
        steps_by_threads=dict(by_threads),
    )
