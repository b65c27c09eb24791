"""Embedding latency, side by side in one process: pooling and prompt × weights.

``python -m bench.embed_latency [--texts-per-world 6] [--rounds 3]``

Times llama.cpp embeddings of the benchmark worlds' first task texts with the proxy's
settings (1 thread, 2 for the batch, 128-token context) in four variants, interleaved
text by text so that a noisy machine slows all of them alike: the mean of the hidden
states or the last one after the embedder's prompt (``PROMPT_HEAD``/``PROMPT_TAIL``),
each from the model file itself (the wheel's Q4_1) and from its float16 copy
(``proxy.models.f16_copy``, what ``guidance.model_f16`` uses). Prints a markdown
table with each variant's time as a ratio of the first's (the embedder before
docs/benchmarks.md, "Prompted embeddings from a float16 copy").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.sim import OFFICE_OPS, OWN_WORLDS, load_world
from proxy.hints.embedder import MAX_TOKENS, PROMPT_HEAD, PROMPT_TAIL
from proxy.models import default_gguf, f16_copy, model_cache_dir


def task_texts(per_world: int) -> list[str]:
    paths = sorted(OWN_WORLDS.glob("*.yaml")) + ([OFFICE_OPS] if OFFICE_OPS.is_file() else [])
    return [task.text for path in paths for task in load_world(path).stream()[:per_world]]


def context(path: Path, pooling: int) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), embedding=True, pooling_type=pooling,
                 n_ctx=MAX_TOKENS, n_batch=MAX_TOKENS, n_ubatch=MAX_TOKENS,
                 n_threads=1, n_threads_batch=2, seed=0, verbose=False)


def variants() -> dict[str, tuple[Any, Callable[[str], str]]]:
    import llama_cpp

    source = default_gguf()
    f16 = f16_copy(source, model_cache_dir())
    plain: Callable[[str], str] = lambda text: text  # noqa: E731
    prompted: Callable[[str], str] = lambda text: f"{PROMPT_HEAD}{text}{PROMPT_TAIL}"  # noqa: E731
    mean, last = llama_cpp.LLAMA_POOLING_TYPE_MEAN, llama_cpp.LLAMA_POOLING_TYPE_LAST
    return {
        "mean, Q4_1 (before)": (context(source, mean), plain),
        "eol, Q4_1": (context(source, last), prompted),
        "mean, float16": (context(f16, mean), plain),
        "eol, float16 (now)": (context(f16, last), prompted),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embed_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts-per-world", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    texts = task_texts(args.texts_per_world)
    contexts = variants()
    ms: dict[str, list[float]] = {name: [] for name in contexts}
    tokens: dict[str, list[int]] = {name: [] for name in contexts}
    for llm, wrap in contexts.values():
        llm.embed(wrap(texts[0]))  # warm up
    for _ in range(args.rounds):
        for text in texts:
            for name, (llm, wrap) in contexts.items():
                start = time.perf_counter()
                llm.embed(wrap(text))
                ms[name].append((time.perf_counter() - start) * 1000)
                tokens[name].append(len(llm.tokenize(wrap(text).encode(), add_bos=False)))
    print(f"{len(texts)} task texts x {args.rounds} rounds, variants interleaved; "
          "1 thread, 2 for the batch\n")
    print("| embedding | tokens p50 (max) | ms p50 | ms p95 | time vs the first |")
    print("|---|---|---|---|---|")
    first = statistics.median(next(iter(ms.values())))
    for name, times in ms.items():
        p95 = statistics.quantiles(times, n=20)[18]
        print(f"| {name} | {statistics.median(tokens[name]):.0f} ({max(tokens[name])}) | "
              f"{statistics.median(times):.0f} | {p95:.0f} | "
              f"{statistics.median(times) / first:.2f} |")
    print("\nreproduce: python -m bench.embed_latency "
          f"--texts-per-world {args.texts_per_world} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
