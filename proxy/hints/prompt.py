"""The small model's prompt, shared by the hint engine (llama.cpp) and the learner
(training). Both must render byte-identical text, so it lives in one place.

The prompt is short on purpose: on CPU every prompt token costs ~5 ms. The system part
is constant so llama.cpp reuses its KV cache across calls; only the task is evaluated.
"""

from __future__ import annotations

from proxy.hints.text import words

SYSTEM = "Name the approach for the task."
MAX_TASK_WORDS = 28
# SmolLM2 uses ChatML; the learner checks this against the tokenizer's own template.
_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n"
    "<|im_start|>user\n{task}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
STOP = ["<|im_end|>", "\n"]
END_OF_TURN = "<|im_end|>"


def task_for_prompt(task: str) -> str:
    """Trim to the first words: they carry the kind of task; the rest costs latency."""
    toks = task.split()
    return " ".join(toks[:MAX_TASK_WORDS])


def chat(system: str, user: str) -> str:
    """One system and one user turn in SmolLM2's ChatML, ending where the reply starts."""
    return _TEMPLATE.format(system=system, task=user)


def render(task: str) -> str:
    return chat(SYSTEM, task_for_prompt(task))


def normalize_label(generated: str) -> str:
    return " ".join(words(generated.split("\n")[0]))
