"""Can the small model name an approach that no answer has shown yet?

    python -m bench.unseen [--world FILE [--world FILE ...]] [--samples 20] [--out F]

Memory and the LoRA-trained model can only name approaches that recorded answers used.
Where a family's best strategy is in no family's prior, the simulated big model never
uses it unprompted, so only an idea from outside the traffic could find it: the small
model's own pretraining. This asks the bare SmolLM2 GGUF (no adapter) for an approach
to every family's tasks and counts the answers that, as a hint, would make the
simulated model follow a strategy (the spec's earliest-name rule, WORLD_SPEC.md):

- ``product``: the proxy's own prompt (``proxy/hints/prompt.py``), greedy, for each
  of a family's first ``--samples`` task texts in the world's stream;
- ``method``: a prompt that asks for a well-known method by name, sampled at
  temperature 1.0 (top-p 0.95) with a different seed per sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.sim import OFFICE_OPS, OWN_WORLDS, load_world
from bench.sim.world import World, earliest_named
from proxy.hints.prompt import STOP, chat, render
from proxy.models import default_gguf

WORLDS = [OFFICE_OPS, OWN_WORLDS / "release-desk.yaml", OWN_WORLDS / "law-firm.yaml"]
METHOD_SYSTEM = ("Suggest a well-known method for this task. "
                 "Answer with the method's name only.")


def task_texts(world: World, samples: int) -> dict[str, list[str]]:
    """Each family's first ``samples`` task texts in the world's own stream."""
    texts: dict[str, list[str]] = {f.id: [] for f in world.families}
    for task in world.stream():
        if len(texts[task.family]) < samples:
            texts[task.family].append(task.text)
    return texts


def never_used_unprompted(world: World) -> set[str]:
    """Strategies in no family's prior, at any time: no answer shows them unhinted."""
    priors = [f.tables.prior for f in world.families]
    priors += [c.prior for p in world.phases for c in p.changes if c.prior]
    return {s.id for s in world.strategies} - {sid for prior in priors for sid in prior}


def probe_world(llm: Any, world: World, samples: int) -> dict[str, Any]:
    families = {}
    for family, texts in task_texts(world, samples).items():
        counts: dict[str, dict[str, int]] = {"product": {}, "method": {}}
        examples: dict[str, str] = {}
        for k, task in enumerate(texts):
            for kind, prompt, temperature in (("product", render(task), 0.0),
                                              ("method", chat(METHOD_SYSTEM, task), 1.0)):
                out = llm(prompt, max_tokens=16, temperature=temperature, top_p=0.95,
                          seed=k, stop=STOP)["choices"][0]["text"].strip()
                examples.setdefault(kind, out)
                followed = earliest_named(world.strategies, out)
                if followed is not None:
                    counts[kind][followed] = counts[kind].get(followed, 0) + 1
        families[family] = {"tasks": len(texts), "named": counts, "example": examples}
    return {"never_used_unprompted": sorted(never_used_unprompted(world)),
            "families": families}


def print_totals(report: dict[str, Any]) -> dict[str, int]:
    totals = {"answers": 0, "any": 0, "unseen": 0}
    for wname, probe in report["worlds"].items():
        unseen = set(probe["never_used_unprompted"])
        print(f"{wname}: strategies in no prior: {', '.join(sorted(unseen)) or '-'}")
        for fid, f in probe["families"].items():
            print(f"  {fid:20s} product {f['named']['product']} method {f['named']['method']}")
            for kind in ("product", "method"):
                totals["answers"] += f["tasks"]
                totals["any"] += sum(f["named"][kind].values())
                totals["unseen"] += sum(n for sid, n in f["named"][kind].items()
                                        if sid in unseen)
    print(f"answers: {totals['answers']}, naming any strategy: {totals['any']}, "
          f"naming one in no prior: {totals['unseen']}")
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.unseen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, action="append", default=None,
                        help="world YAML; repeatable (default: the three worlds)")
    parser.add_argument("--samples", type=int, default=20,
                        help="task texts per family, the first ones in the world's stream")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from llama_cpp import Llama  # heavy: imported only to probe

    llm = Llama(model_path=str(default_gguf()), n_ctx=512, n_threads=2, verbose=False)
    start = time.perf_counter()
    report: dict[str, Any] = {"samples_per_family": args.samples, "worlds": {}}
    try:
        for path in args.world or WORLDS:
            world = load_world(path)
            report["worlds"][world.name] = probe_world(llm, world, args.samples)
    finally:
        llm.close()
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["command"] = "python -m bench.unseen " + " ".join(argv or sys.argv[1:])
    report["totals"] = print_totals(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
