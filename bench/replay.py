"""Offline replay: the hint engine's memory over a world's stream, without the proxy.

``python -m bench.replay --world FILE [--world FILE ...] [--seeds 8] [--meaning
[--embeddings FILE.npz]] [--set KEY=VALUE ...] [--out replay.json]``

Drives ``proxy.hints.recommend.Recommender`` (what the proxy runs in
``guidance.mode: retrieval``; with ``--meaning``, also the memory by meaning that mode
``both`` adds, with the real small model's embeddings, but not its LoRA labels) task by
task, as the proxy would: the hint goes
into the system prompt through the proxy's own ``inject_hint``, the simulated model
decides with the spec's rules (``bench.sim.model.decide``), every turn's answer is
observed and the outcome is posted for the episode before the next task. The control
arm is the same stream with no hint. The spec's metrics come from ``bench.sim.metrics``.
With ``--meaning`` it is an upper bound on the proxy: every embedding is there when
wanted (the proxy waits for one only within ``guidance.budget_ms``, and stores those of
finished calls from a background thread, dropping some under a backlog).

It takes seconds per world and seed where the real benchmark takes minutes, so the
engine's rules can be judged over many world seeds (the world's own seed first, then
1, 2, ...). On a world's own seed it gives the real retrieval-only run's numbers
(pinned by a test). ``--set`` overrides a ``guidance`` key, e.g. ``--set min_success=0``.
Nothing here changes the proxy: it is a measuring tool, used for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bench.embeddings_file import EmbeddingsFile, model_tag
from bench.harness.processes import guidance_settings
from bench.harness.report import fmt
from bench.sim import load_world
from bench.sim.metrics import ArmLog, Report, compute
from bench.sim.model import TaskRecord, decide, parse_messages, reply_text, task_record
from bench.sim.world import Task, World
from proxy.config import Config, GuidanceConfig, load_config
from proxy.errors import ConfigError
from proxy.hints.embedder import Embedder
from proxy.hints.recommend import Recommender
from proxy.hints.strategies import Strategy, hint_text
from proxy.hints.text import Vector
from proxy.models import small_model_path, small_model_weights
from proxy.payloads import inject_hint

SUMMARY = ("accuracy", "coverage", "uplift", "transfer", "retention", "adaptation")
Embed = Callable[[str], Vector]
T = TypeVar("T")


def small_model_embeddings(config: Config) -> tuple[Embed, int, Embedder]:
    """The proxy's embedder on the proxy's small model (``small_model_weights``),
    answered synchronously; it caches every text, so each of a world's texts is
    embedded once over all seeds."""
    embedder = Embedder.for_guidance(small_model_weights(config), config.guidance,
                                     cache_size=1_000_000)
    dim = embedder.load()
    return (lambda text: embedder.submit(text).result()), dim, embedder


@contextmanager
def embeddings(config: Config, kept_in: Path | None) -> Iterator[tuple[Embed, int]]:
    """The small model's embeddings and their dimension while the block runs; with
    ``kept_in``, read from and saved to that .npz file, so a text is embedded once
    across runs."""
    tag = model_tag(small_model_path(config), f16=config.guidance.model_f16)
    kept = EmbeddingsFile(kept_in, tag) if kept_in else None
    embed, dim, embedder = small_model_embeddings(config)
    try:
        yield (kept.wrap(embed) if kept else embed), dim
    finally:
        embedder.close()
        if kept is not None:
            kept.save()


def messages(world: World, task: Task) -> list[dict[str, str]]:
    first: list[dict[str, str]] = []
    if world.agent_system_prompt is not None:
        first.append({"role": "system", "content": world.agent_system_prompt})
    return [*first, {"role": "user", "content": task.text}]


def record(task: Task, system_text: str, world: World) -> TaskRecord:
    """What the simulated model does with the task given this system text, every
    turn answered (the replay's agent never abandons an episode)."""
    return task_record(task, system_text, decide(world, task, system_text), task.turns)


def control_arm(world: World) -> list[TaskRecord]:
    return [record(t, parse_messages(messages(world, t)).system_text, world)
            for t in world.stream()]


def guided_arm(world: World, guidance: GuidanceConfig,
               meaning: tuple[Embed, int] | None = None,
               sources: list[str | None] | None = None) -> list[TaskRecord]:
    """The guided arm; ``sources``, if given, receives each task's hint source in
    stream order ("words", "meaning", "meaning_challenge", or None when unhinted)."""
    rec = Recommender(guidance)
    if meaning is not None:
        rec.use_meaning(meaning[1])
    records = []
    for task in world.stream():
        chosen, source = choose(rec, task.text, meaning[0] if meaning else None)
        if sources is not None:
            sources.append(source)
        body: dict[str, Any] = {"messages": messages(world, task)}
        if chosen is not None:
            body = inject_hint("/v1/chat/completions", body, hint_text(chosen)) or body
        rec_ = record(task, parse_messages(body["messages"]).system_text, world)
        records.append(rec_)
        episode = f"e{task.index}"
        for turn in range(task.turns):
            request = f"r{task.index}:{turn}"
            sid = rec.observe_call(request, episode, task.text,
                                   reply_text(world, task, rec_.strategy, turn),
                                   hint_text(chosen) if chosen is not None else None)
            if sid is not None and meaning is not None:
                rec.observe_meaning(request, episode, meaning[0](task.text), sid)
        rec.observe_outcome(None, episode, 1.0 if rec_.success else 0.0)
    return records


def choose(rec: Recommender, text: str,
           embed: Embed | None) -> tuple[Strategy | None, str | None]:
    """The engine's choice without the LoRA model: words, then (if given) meaning, which
    also challenges a weak answer by words; with the memory that made it."""
    by_words = rec.recommend(text)
    if embed is not None and rec.challengeable(by_words):
        challenger = rec.challenge(by_words, embed(text))
        if challenger is not None:
            return challenger.strategy, challenger.source
    if by_words.skip != "thin_evidence" or embed is None:
        return by_words.strategy, "words" if by_words.strategy is not None else None
    by_meaning = rec.recommend_by_meaning(embed(text)).strategy
    return by_meaning, "meaning" if by_meaning is not None else None


def replay(world: World, guidance: GuidanceConfig,
           meaning: tuple[Embed, int] | None = None) -> Report:
    return compute(world, ArmLog(control_arm(world)),
                   ArmLog(guided_arm(world, guidance, meaning)))


def summary(report: Report) -> dict[str, float | None]:
    """Last-phase accuracy and coverage, and the overall spec metrics; adaptation is
    the mean over the world's changed families."""
    last, overall = report.phases[-1], report.overall
    adapt = [v for v in overall.adaptation.values() if v is not None]
    return {
        "accuracy": last.accuracy, "coverage": last.coverage, "uplift": overall.uplift,
        "transfer": overall.transfer, "retention": overall.retention,
        "adaptation": statistics.fmean(adapt) if adapt else None,
    }


def replay_config(overrides: list[str]) -> Config:
    """The proxy's guidance defaults with ``KEY=VALUE`` overrides, validated as the
    proxy validates its config file (unknown keys and bad values are errors)."""
    try:
        values = {"enabled": True, "mode": "retrieval", "holdout": 0.0,
                  **guidance_settings(overrides)}
        return load_config({"guidance": values})
    except (ValueError, ConfigError) as exc:
        raise SystemExit(f"--set: {exc}") from exc


def seeds_of(world: World, count: int) -> list[int]:
    return [world.seed, *(s for s in range(1, count + 1) if s != world.seed)][:count]


def each_world_seed(paths: list[Path], count: int,
                    per_seed: Callable[[World], T]) -> Iterator[tuple[str, dict[int, T]]]:
    """Each world's name and ``per_seed`` of it at each of its first ``count`` seeds."""
    for path in paths:
        world = load_world(path)
        yield world.name, {seed: per_seed(dataclasses.replace(world, seed=seed))
                           for seed in seeds_of(world, count)}


def run(paths: list[Path], count: int, guidance: GuidanceConfig,
        meaning: tuple[Embed, int] | None = None) -> dict[str, Any]:
    return {name: {"seeds": rows, "mean": mean_row(list(rows.values()))}
            for name, rows in each_world_seed(
                paths, count, lambda world: summary(replay(world, guidance, meaning)))}


def mean_row(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    def mean(key: str) -> float | None:
        vals = [v for r in rows if (v := r[key]) is not None]
        return statistics.fmean(vals) if vals else None
    return {key: mean(key) for key in SUMMARY}


def print_table(results: dict[str, Any]) -> None:
    print("world          seed    " + "  ".join(f"{k:>10}" for k in SUMMARY))
    for name, data in results.items():
        for label, row in [*data["seeds"].items(), ("mean", data["mean"])]:
            cells = "  ".join(f"{fmt(row[k], k == 'uplift'):>10}" for k in SUMMARY)
            print(f"{name:14} {label!s:>6}  {cells}")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def world_parser(prog: str, doc: str | None, seeds: int) -> argparse.ArgumentParser:
    """The command line every replay-based tool starts from: worlds and seeds."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, action="append", required=True)
    parser.add_argument("--seeds", type=_at_least_one, default=seeds,
                        help=f"world seeds per world: its own, then 1, 2, ... "
                             f"(default {seeds})")
    return parser


def add_meaning_options(parser: argparse.ArgumentParser) -> None:
    """``--meaning`` and ``--embeddings``, for every tool that replays the engine."""
    parser.add_argument("--meaning", action="store_true",
                        help="add mode both's memory by meaning (the small model's "
                             "embeddings; loads it)")
    parser.add_argument("--embeddings", type=Path, metavar="FILE",
                        help="with --meaning: keep the embeddings in FILE (.npz) between "
                             "runs; texts already in it are not embedded again")


def with_meaning(parser: argparse.ArgumentParser, args: argparse.Namespace, config: Config,
                 work: Callable[[tuple[Embed, int] | None], T]) -> T:
    """``work`` given the embeddings when ``--meaning`` asks for them, else None."""
    if args.meaning and not config.guidance.meaning:
        parser.error("--meaning with meaning=false: choose one")
    if args.embeddings and not args.meaning:
        parser.error("--embeddings needs --meaning")
    if not args.meaning:
        return work(None)
    with embeddings(config, args.embeddings) as meaning:
        return work(meaning)


def emit(tool: str, argv: list[str], results: Any, out: Path | None) -> None:
    """The command line that reproduces a tool's run, and its numbers as JSON in
    ``out`` if given."""
    print("reproduce: " + shlex.join(["python", "-m", tool, *argv]))
    if out:
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = world_parser("python -m bench.replay", __doc__, seeds=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a guidance config key")
    add_meaning_options(parser)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    config = replay_config(args.set)
    results = with_meaning(parser, args, config,
                           lambda meaning: run(args.world, args.seeds, config.guidance,
                                               meaning))
    print_table(results)
    print("\nlast-phase accuracy and coverage; the rest overall (adaptation: mean of families)")
    emit("bench.replay", argv, results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
