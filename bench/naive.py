"""The issue's naive-retrieval bar, measured side by side with Tactician's engine.

    python -m bench.naive --world FILE [--world FILE ...] [--seeds 20]
        [--meaning [--embeddings FILE.npz]] [--out naive.json]

The learning benchmark's issue sets a bar that storage alone reaches, with no model at
all: *inject the first sentence of the response that succeeded most often for the 15
most similar past tasks (word overlap), else no hint*. This tool implements that
baseline (``NaiveRetrieval``) and runs it over the same world streams, seeds and
simulated model as ``bench.replay`` runs the proxy's recommender, so the two are
compared task for task in one run instead of against numbers quoted from elsewhere.

How the baseline reads its one sentence, where the issue leaves it open:
- *similar*: Jaccard overlap of the task texts' content words (the proxy's own word
  notion: lowercased, numbers as one token, stopwords dropped), the 15 highest above 0,
  ties to the more recent task;
- *the first sentence*: of the episode's first answer (``approach_sentence``: the first
  sentence of three words or more), stored with the episode's outcome;
- *succeeded most often*: read two ways, both run. ``most-wins`` (the words as
  written): the sentence with the most successes among those 15. ``best-rate``: the
  one with the highest share of successes among its uses there (of those with one
  success or more; ties to more successes). On the worlds here best-rate is much the
  stronger: most-wins follows whatever the big model already does most, and every
  hint it gives makes that more so. Remaining ties go to the sentence of the more
  similar task. No sentence succeeded: no hint.
The hint is injected where the proxy puts its own (``inject_hint``), as the bare
sentence. Nothing here changes the proxy: it is a measuring tool.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import replay
from bench.harness.report import fmt
from bench.sim.metrics import ArmLog, compute
from bench.sim.model import TaskRecord, parse_messages, reply_text
from bench.sim.world import World
from proxy.config import GuidanceConfig
from proxy.hints.strategies import approach_sentence
from proxy.hints.text import content_words
from proxy.payloads import inject_hint

NEIGHBOURS = 15
RULES = ("most-wins", "best-rate")
ARMS = (*RULES, "tactician")


class NaiveRetrieval:
    """Past tasks as word sets, each with its answer's first sentence and its outcome."""

    def __init__(self, k: int = NEIGHBOURS) -> None:
        self.k = k
        self._sizes: list[int] = []
        self._sentences: list[str | None] = []
        self._success: list[bool] = []
        self._postings: dict[str, list[int]] = defaultdict(list)  # word -> task rows

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, task: str, answer: str | None, success: bool) -> None:
        row = len(self._sizes)
        wordset = set(content_words(task))
        for word in wordset:
            self._postings[word].append(row)
        self._sizes.append(len(wordset))
        self._sentences.append(approach_sentence(answer))
        self._success.append(success)

    def similar(self, task: str) -> list[tuple[int, float]]:
        """The ``k`` past tasks with the highest word overlap above 0, as (row, Jaccard),
        most similar first (ties: the more recent first)."""
        wordset = set(content_words(task))
        lists = [self._postings[w] for w in wordset if w in self._postings]
        if not lists:
            return []
        shared = np.bincount(np.concatenate([np.asarray(x) for x in lists]),
                             minlength=len(self))
        rows = np.flatnonzero(shared)
        sims = shared[rows] / (np.asarray(self._sizes)[rows] + len(wordset) - shared[rows])
        order = np.lexsort((-rows, -sims))[:self.k]  # by similarity, then recency
        return [(int(rows[i]), float(sims[i])) for i in order]

    def hint(self, task: str, rule: str = "most-wins") -> str | None:
        """The first sentence that succeeded most often among the similar tasks, by
        ``rule`` (one of ``RULES``), or None when none of them succeeded."""
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}: one of {', '.join(RULES)}")
        tally: dict[str, tuple[int, int]] = {}  # sentence -> (successes, uses)
        for row, _ in self.similar(task):
            sentence = self._sentences[row]
            if sentence is not None:
                wins, uses = tally.get(sentence, (0, 0))
                tally[sentence] = (wins + self._success[row], uses + 1)
        won = {s: v for s, v in tally.items() if v[0] > 0}
        if not won:
            return None
        if rule == "most-wins":
            return max(won, key=lambda s: won[s][0])
        return max(won, key=lambda s: (won[s][0] / won[s][1], won[s][0]))


def naive_arm(world: World, rule: str = "most-wins",
              k: int = NEIGHBOURS) -> list[TaskRecord]:
    """The guided arm with the naive baseline choosing the hints."""
    memory = NaiveRetrieval(k)
    records = []
    for task in world.stream():
        body: dict[str, Any] = {"messages": replay.messages(world, task)}
        sentence = memory.hint(task.text, rule)
        if sentence is not None:
            body = inject_hint("/v1/chat/completions", body, sentence) or body
        rec = replay.record(task, parse_messages(body["messages"]).system_text, world)
        records.append(rec)
        memory.add(task.text, reply_text(world, task, rec.strategy, 0), rec.success)
    return records


def side_by_side(world: World, guidance: GuidanceConfig,
                 meaning: tuple[replay.Embed, int] | None) -> dict[str, Any]:
    """Every arm's summary on one world seed, against the same control arm."""
    control = ArmLog(replay.control_arm(world))
    guided = {rule: naive_arm(world, rule) for rule in RULES}
    guided["tactician"] = replay.guided_arm(world, guidance, meaning)
    return {arm: replay.summary(compute(world, control, ArmLog(records)))
            for arm, records in guided.items()}


def run(paths: list[Path], count: int, guidance: GuidanceConfig,
        meaning: tuple[replay.Embed, int] | None = None) -> dict[str, Any]:
    return {name: {"seeds": rows,
                   "mean": {arm: replay.mean_row([r[arm] for r in rows.values()])
                            for arm in ARMS}}
            for name, rows in replay.each_world_seed(
                paths, count, lambda world: side_by_side(world, guidance, meaning))}


def paired(results: dict[str, Any], baseline: str,
           key: str) -> tuple[float, float, int] | None:
    """Mean of Tactician minus ``baseline`` over every world seed where both are
    defined, its standard error, and how many there were."""
    diffs = [t - n for data in results.values() for row in data["seeds"].values()
             if (n := row[baseline][key]) is not None
             and (t := row["tactician"][key]) is not None]
    if len(diffs) < 2:
        return None
    return (statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)),
            len(diffs))


def print_table(results: dict[str, Any]) -> None:
    print(f"{'world':14} {'arm':10} " + "  ".join(f"{k:>10}" for k in replay.SUMMARY))
    for name, data in results.items():
        for arm in ARMS:
            row = data["mean"][arm]
            cells = "  ".join(f"{fmt(row[k], k == 'uplift'):>10}" for k in replay.SUMMARY)
            print(f"{name if arm == ARMS[0] else '':14} {arm:10} {cells}")
    for rule in RULES:
        print(f"\nTactician minus {rule}, paired by world and seed (± one standard error):")
        for key in replay.SUMMARY:
            got = paired(results, rule, key)
            if got is not None:
                scale, unit = (100.0, " points") if key == "uplift" else (1.0, "")
                print(f"  {key:11} {got[0] * scale:+.3f} ± {got[1] * scale:.3f}{unit} "
                      f"(n={got[2]})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = replay.world_parser("python -m bench.naive", __doc__, seeds=20)
    replay.add_meaning_options(parser)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    config = replay.replay_config([])
    results = replay.with_meaning(parser, args, config,
                                  lambda meaning: run(args.world, args.seeds,
                                                      config.guidance, meaning))
    print_table(results)
    print("\nmeans over seeds; last-phase accuracy and coverage, the rest overall")
    replay.emit("bench.naive", argv, results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
