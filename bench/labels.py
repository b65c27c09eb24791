"""What each published adapter learned: the small model's choice for every distinct task
of a phase, scored per family against that phase's best strategies.

    python -m bench.labels --world FILE --state DIR [--phase NAME] [--out F]

DIR is a proxy's state directory; ``python -m bench.learning --keep`` keeps the guided
arm's as ``<workdir>/guided/tactician.state``. Every version under ``DIR/adapters`` is
loaded into the proxy's own ``SmallModel`` (same prompt, same early stop) and asked
about each task text once; its label is resolved through that version's catalog to the
hint the proxy would send, and the hint is read with the simulated model's name rule
(WORLD_SPEC.md). Families whose domain first appears in the phase are marked *new*:
there the model can only transfer what it learned elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.sim import World, load_world
from bench.sim.metrics import new_domains
from bench.sim.world import earliest_named
from learner import publish
from proxy.config import load_config
from proxy.hints.llm import SmallModel
from proxy.hints.strategies import StrategyCatalog, hint_text
from proxy.models import small_model_weights


def proxy_small_model() -> SmallModel:
    """The small model as the proxy runs it by default (weights, threads, label
    length)."""
    config = load_config({})
    g = config.guidance
    return SmallModel(small_model_weights(config), threads=g.threads,
                      batch_threads=g.batch_threads, max_tokens=g.max_hint_tokens)


def load_version(model: SmallModel, version_dir: Path) -> StrategyCatalog:
    """Load a published version (learner/publish.py's layout) as the proxy would."""
    catalog = StrategyCatalog.from_json((version_dir / "catalog.json").read_text())
    model.load(version_dir / "adapter.gguf", version_dir.name, catalog)
    return catalog


def score(model: SmallModel, world: World, phase: str, tasks: dict[str, str],
          catalog: StrategyCatalog) -> dict[str, dict[str, int]]:
    """Per family: how many task texts the model's hint would send to a best strategy."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"right": 0, "tasks": 0})
    for text, family in tasks.items():
        label, _ = model.submit(text).result()
        sid = catalog.resolve(label)
        strategy = catalog.get(sid) if sid is not None else None
        named = earliest_named(world.strategies, hint_text(strategy)) if strategy else None
        out[family]["tasks"] += 1
        out[family]["right"] += named in world.best_strategies(family, phase)
    return dict(out)


def run(world: World, state: Path, phase: str) -> dict[str, Any]:
    published = publish.versions(state)
    if not published:
        raise SystemExit(f"no published adapter under {publish.adapters_dir(state)}: "
                         "pass a proxy's state directory")
    tasks = {t.text: t.family for t in world.stream() if t.phase == phase}
    index = [p.name for p in world.phases].index(phase)
    model = proxy_small_model()
    report: dict[str, Any] = {"phase": phase, "versions": {},
                              "new_domains": sorted(new_domains(world, index))}
    try:
        for version in published:
            catalog = load_version(model, publish.adapters_dir(state) / version)
            report["versions"][version] = score(model, world, phase, tasks, catalog)
    finally:
        model.close()
    return report


def print_table(world: World, report: dict[str, Any]) -> None:
    domain = {f.id: f.domain for f in world.families}
    families = sorted({f for v in report["versions"].values() for f in v})
    print(f"phase {report['phase']}: right / distinct task texts per family "
          "(* new domain in this phase)")
    print(f"{'version':10s} " + " ".join(
        f"{f + ('*' if domain[f] in report['new_domains'] else ''):>20s}" for f in families))
    for version, fams in report["versions"].items():
        print(f"{version:10s} " + " ".join(
            f"{fams[f]['right']:>14d} / {fams[f]['tasks']:<3d}" for f in families))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True,
                        help="the proxy's state directory (holds adapters/)")
    parser.add_argument("--phase", default=None, help="default: the last phase")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    world = load_world(args.world)
    phase = args.phase or world.phases[-1].name
    if phase not in {p.name for p in world.phases}:
        parser.error(f"no phase {phase!r} in {world.name}")
    report = run(world, args.state, phase)
    report["command"] = "python -m bench.labels " + " ".join(argv or sys.argv[1:])
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print_table(world, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
