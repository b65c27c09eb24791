"""How a new kind of task is hinted on its first day, over many world seeds.

    python -m bench.firstday --world FILE [--world FILE ...] [--seeds 20]
        [--embeddings FILE.npz] [--out firstday.json]

The spec's *transfer* is accuracy on the first day of a domain new in its phase. This
tool replays the same tasks as ``bench.replay --meaning`` (memory by words, then by
meaning, no LoRA labels) and splits them by how many tasks of the same family that day
had already seen, and by the memory that chose the hint: it shows how fast the engine
learns a new kind of task within the day, and which memory its misses come from. Like
the replay, it changes nothing in the proxy.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bench import replay
from bench.sim.metrics import is_transfer_task, names_best, transfer_domains
from bench.sim.model import TaskRecord
from bench.sim.world import World
from proxy.config import GuidanceConfig

BUCKETS = ((1, 3), (4, 7), (8, 11), (12, 15), (16, None))  # the task's ordinal that day


def bucket_label(low: int, high: int | None) -> str:
    return f"{low}-{high}" if high is not None else f"{low}+"


def outcome(world: World, rec: TaskRecord) -> str:
    if rec.named is None:
        return "unhinted"
    return "right" if names_best(world, rec) else "wrong"


def tally(world: World, records: list[TaskRecord], sources: list[str | None],
          counts: Counter[tuple[str, str]]) -> None:
    """Adds each first-day task of a new domain to ``counts`` twice: under its ordinal
    bucket and under its source, each with right / wrong / unhinted."""
    domains = {p.name: transfer_domains(world, i) for i, p in enumerate(world.phases)}
    seen: Counter[str] = Counter()
    for rec, source in zip(records, sources, strict=True):
        if not is_transfer_task(rec, domains[rec.phase]):
            continue
        seen[rec.family] += 1
        low, high = next(b for b in BUCKETS if b[1] is None or seen[rec.family] <= b[1])
        result = outcome(world, rec)
        counts[(bucket_label(low, high), result)] += 1
        counts[(f"by {source}" if source else "no hint", result)] += 1


def run(paths: list[Path], seeds: int, guidance: GuidanceConfig, embed: replay.Embed,
        dim: int) -> dict[str, dict[str, dict[str, int]]]:
    def per_seed(world: World) -> Counter[tuple[str, str]]:
        sources: list[str | None] = []
        records = replay.guided_arm(world, guidance, (embed, dim), sources)
        counts: Counter[tuple[str, str]] = Counter()
        tally(world, records, sources, counts)
        return counts

    out: dict[str, dict[str, dict[str, int]]] = {}
    for name, by_seed in replay.each_world_seed(paths, seeds, per_seed):
        rows: dict[str, dict[str, int]] = {}
        for (row, result), n in sorted(sum(by_seed.values(), Counter()).items()):
            rows.setdefault(row, {"right": 0, "wrong": 0, "unhinted": 0})[result] = n
        out[name] = rows
    return out


def print_table(results: dict[str, dict[str, dict[str, int]]]) -> None:
    order = [bucket_label(*b) for b in BUCKETS] + ["by words", "by meaning", "no hint"]
    for name, rows in results.items():
        right = sum(r["right"] for k, r in rows.items() if k.startswith("by "))
        named = right + sum(r["wrong"] for k, r in rows.items() if k.startswith("by "))
        print(f"{name}: transfer {right}/{named} = {right / max(named, 1):.3f}")
        print("  task of its family that day   right  wrong  unhinted")
        for key in (k for k in order if k in rows):
            r = rows[key]
            print(f"  {key:28} {r['right']:6} {r['wrong']:6} {r['unhinted']:9}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = replay.world_parser("python -m bench.firstday", __doc__, seeds=20)
    parser.add_argument("--embeddings", type=Path, metavar="FILE",
                        help="keep the embeddings in FILE (.npz), as bench.replay does")
    parser.add_argument("--out", type=Path, help="write the counts as JSON")
    args = parser.parse_args(argv)
    config = replay.replay_config([])
    with replay.embeddings(config, args.embeddings) as (embed, dim):
        results = run(args.world, args.seeds, config.guidance, embed, dim)
    print_table(results)
    replay.emit("bench.firstday", argv, results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
