"""``python -m learner {train,rollback,status} --config FILE``.

``train`` runs one cycle: dataset → LoRA (time-bounded) → GGUF → llama.cpp/PEFT agreement
check → gate → publish. Every run, whatever its end, leaves a run record. Exit status:
0 when the cycle ran to a decision (promoted, refused, or nothing to do), 1 on failure
(with one line on stderr saying why), 2 on a bad command line or config.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from learner import label_cache, publish, warm
from learner.dataset import Dataset, load_dataset
from learner.pace import Pace, Probe
from learner.train import Example, TrainResult, TrainSettings
from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.models import small_model_path, small_model_weights

AGREEMENT_MIN = 0.9
VERIFY_SAMPLE = 16
EPOCHS = 3
SETTINGS = TrainSettings(r=16, alpha=32.0, lr=3e-3, min_lr_ratio=0.1, batch_size=4, seed=0,
                         converge_loss=0.02, converge_window=25)
MIN_TRAIN_SECONDS = 60.0  # below this an adapter learns nothing worth gating
# Time left after training, beyond scoring the new adapter: export, the llama.cpp/PEFT
# agreement check (1.2-1.5 s a task on one thread here: the proxy's label, llama.cpp's
# whole completion, one PEFT pass; the slack covers the excess) and slack for noise.
VERIFY_SECONDS_PER_TASK = 1.0
SLACK_SECONDS = 15.0
EVAL_MARGIN = 1.25  # the new adapter may run a little slower than the baseline did


@dataclass
class Outcome:
    status: str  # ok | skipped | failed
    decision: str | None  # promoted | refused | rollback | None
    version: str | None
    reason: str
    exit_code: int = 0


@dataclass
class Cycle:
    """One training run; ``metrics`` fills in as phases finish, so even a failed run
    records how far it got."""

    config: Config
    max_steps: int | None = None  # overrides the planned steps (smoke runs, tests)
    cold: bool = False  # train from scratch even when the serving adapter could continue
    run_id: str = field(default_factory=publish.new_run_id)
    started_at: datetime = field(default_factory=publish.now)
    started: float = field(default_factory=time.monotonic)
    metrics: dict[str, Any] = field(default_factory=dict)
    probe: Probe | None = None  # how busy the proxy is (default: ask its /healthz)
    pace: Pace = field(init=False)

    def __post_init__(self) -> None:
        self.pace = Pace(self.config, self.probe)

    def threads(self, phase: str) -> int:
        """Threads for one llama.cpp scoring pass, chosen as it starts."""
        n = self.pace.threads()
        self.metrics.setdefault("threads", {})[phase] = n
        return n

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        result = fn()
        self.metrics.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 3)
        return result

    def run(self) -> Outcome:
        cfg = self.config.learner
        dataset: Dataset = self.timed("dataset", lambda: load_dataset(self.config))
        self.metrics["counts"] = dataset.stats
        say(f"dataset: {_counts(dataset)} from {dataset.stats['source']}")
        if dataset.labelled < cfg.min_examples:
            return Outcome("skipped", None, None,
                           f"not enough data: {dataset.labelled} labelled episodes < "
                           f"learner.min_examples {cfg.min_examples}; nothing to do")
        work = self.config.state_dir / "work" / self.run_id
        try:
            return self._train_and_publish(dataset, small_model_path(self.config),
                                           small_model_weights(self.config), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _train_and_publish(self, dataset: Dataset, base: Path, served: Path,
                           work: Path) -> Outcome:
        """Train on ``base`` (the model file); check the export in llama.cpp on
        ``served``, the weights the proxy evaluates (its float16 copy by default)."""
        from learner.export_gguf import BaseShape, export_lora_gguf  # noqa: PLC0415
        from learner.gate import evaluate, score_baseline  # noqa: PLC0415

        g = self.config.guidance
        current = publish.read_current(self.config.state_dir)
        labels_fp = label_cache.fingerprint(self._base_sha256(served), g.max_hint_tokens)
        known = label_cache.load(current.adapter.parent, labels_fp) if current else {}
        baseline = self.timed("baseline", lambda: score_baseline(
            served, dataset, current, threads=self.threads("baseline"),
            max_tokens=g.max_hint_tokens, known=known))
        self.metrics["baseline_labels_reused"] = baseline.reused
        budget = self._train_budget(baseline.eval_seconds)
        result = self.timed("train", lambda: self._train(dataset, base, work / "peft", budget))
        gguf = self.timed("export", lambda: export_lora_gguf(
            result.adapter_dir, BaseShape.from_gguf(base), None, work / "adapter.gguf"))
        agree = self.timed("verify", lambda: self._verify(dataset, served, gguf, result,
                                                          baseline.eval_seconds))
        if agree < AGREEMENT_MIN:
            return Outcome("failed", "refused", None,
                           f"llama.cpp decides like PEFT on only {agree:.0%} of held-out "
                           f"tasks "
                           f"(< {AGREEMENT_MIN:.0%}): the GGUF export does not reproduce "
                           "the trained adapter; not publishing",
                           exit_code=1)
        gate = self.timed("gate", lambda: evaluate(
            served, gguf, dataset, baseline, tolerance=self.config.learner.tolerance,
            threads=self.threads("gate"), max_tokens=g.max_hint_tokens))
        self.metrics["gate"] = gate.metrics()
        if not gate.promote:
            return Outcome("ok", "refused", None, gate.reason)
        manifest = self._manifest(dataset, base, served, gate.reason, gate.rule)
        version = self.timed("publish", lambda: publish.publish_version(
            self.config.state_dir, gguf, dataset.catalog.to_json(), manifest,
            keep=self.config.learner.keep_versions, peft_dir=result.adapter_dir,
            labels_json=label_cache.dumps(gate.labels, labels_fp)))
        return Outcome("ok", "promoted", version, gate.reason)

    def _train_budget(self, eval_seconds: float) -> float:
        """Seconds training may take so the whole run fits ``learner.max_run_seconds``."""
        cfg = self.config.learner
        reserve = self._reserve_seconds(eval_seconds)
        left = cfg.max_run_seconds - (time.monotonic() - self.started) - reserve
        budget = min(cfg.max_train_seconds, max(MIN_TRAIN_SECONDS, left))
        self.metrics["budget"] = {"run_seconds": cfg.max_run_seconds,
                                  "eval_seconds": round(eval_seconds, 1),
                                  "reserve_seconds": round(reserve, 1),
                                  "train_seconds": round(budget, 1)}
        say(f"training budget {budget:.0f} s (run budget {cfg.max_run_seconds:.0f} s, "
            f"{reserve:.0f} s kept for export, verification and the gate)")
        return budget

    @staticmethod
    def _reserve_seconds(eval_seconds: float) -> float:
        """What one verification sample and the gate after it need of the run budget."""
        return (EVAL_MARGIN * eval_seconds + VERIFY_SAMPLE * VERIFY_SECONDS_PER_TASK
                + SLACK_SECONDS)

    def _train(self, dataset: Dataset, base: Path, out: Path, budget: float) -> TrainResult:
        from learner.lora_model import AdapterMismatch  # noqa: PLC0415
        from learner.train import train_lora  # noqa: PLC0415

        start = None if self.cold else warm.find(self.config.state_dir,
                                                 self._base_sha256(base), SETTINGS)
        try:
            examples, settings = self._plan(dataset, start, budget)
            result = train_lora(examples, base, out, settings,
                                init=start.weights if start else None,
                                threads=self.pace.threads)
        except AdapterMismatch as exc:
            if start is None:
                raise
            say(f"{exc}; training from scratch instead")
            start = None
            examples, settings = self._plan(dataset, None, budget)
            result = train_lora(examples, base, out, settings, threads=self.pace.threads)
        steps = settings.max_steps
        train_s = result.seconds - result.load_seconds
        self.metrics["train"] = {
            "init": start.version if start else None, "examples": len(examples),
            "backend": result.backend, "steps": result.steps, "planned_steps": steps,
            "stop_reason": result.stop_reason, "seconds": round(result.seconds, 3),
            "load_seconds": round(result.load_seconds, 3),
            "steps_per_s": round(result.steps / train_s, 4) if train_s > 0 else None,
            "loss_first": result.losses[0], "loss_last": result.losses[-1],
            "steps_by_threads": {str(k): v for k, v in sorted(result.steps_by_threads.items())},
            "settings": {k: v for k, v in asdict(settings).items() if k != "cache_dir"},
        }
        say(f"trained {result.steps}/{steps} steps in {result.seconds:.0f} s "
            f"(loss {result.losses[0]:.3f} → {result.losses[-1]:.3f})")
        return result

    def _verify(self, dataset: Dataset, served: Path, gguf: Path, result: TrainResult,
                eval_seconds: float) -> float:
        """How often llama.cpp with the export decides like PEFT: on VERIFY_SAMPLE
        tasks, or twice that where the first fall short and the run has time left."""
        from learner.gate import serving_agreement  # noqa: PLC0415

        pool = [*dataset.heldout_items, *dataset.replay_items, *dataset.train_items]
        tasks = list(dict.fromkeys(it.episode.task for it in pool))[:2 * VERIFY_SAMPLE]
        # Another batch, then the gate, within max_run_seconds.
        after = self._reserve_seconds(eval_seconds)
        ends = self.started + self.config.learner.max_run_seconds

        def more_time() -> bool:
            return time.monotonic() + after <= ends

        agree = serving_agreement(served, gguf, result.model, result.tokenizer, tasks,
                                  dataset.catalog, threads=self.config.guidance.threads,
                                  max_tokens=self.config.guidance.max_hint_tokens,
                                  batch=VERIFY_SAMPLE, enough=AGREEMENT_MIN,
                                  more_time=more_time)
        self.metrics["agreement"] = asdict(agree)
        say(f"llama.cpp/PEFT agreement on {agree.n} held-out tasks: decisions "
            f"{agree.decision:.0%}, text {agree.text:.0%}")
        return agree.decision

    def _plan(self, dataset: Dataset, start: warm.WarmStart | None,
              budget: float) -> tuple[list[Example], TrainSettings]:
        """What to train on and for how long: from scratch, every training example for
        ``EPOCHS``; continuing ``start``, what it has not seen plus a rehearsal sample."""
        from dataclasses import replace  # noqa: PLC0415

        from learner.train import steps_per_epoch  # noqa: PLC0415

        examples = dataset.train if start is None else warm.examples(dataset, start.since)
        epochs = EPOCHS if start is None else warm.WARM_EPOCHS
        steps = self.max_steps or epochs * steps_per_epoch(len(examples), SETTINGS.batch_size)
        say(f"training from scratch on {len(examples)} examples" if start is None else
            f"continuing {start.version} on {len(examples)} examples (new since its data "
            "window, plus older ones rehearsed)")
        # The dequantized checkpoint both backends load (~540 MB) outlives the run's work
        # folder, so it is built once per base, not every night.
        return examples, replace(SETTINGS, max_steps=steps, max_seconds=budget,
                                 num_threads=self.config.learner.threads,
                                 cache_dir=self.config.state_dir / "cache")

    def _base_sha256(self, base: Path) -> str:
        from learner.basemodel import sha256_file  # noqa: PLC0415

        return sha256_file(base, self.config.state_dir / "cache")

    def _manifest(self, dataset: Dataset, base: Path, served: Path, reason: str,
                  rule: str) -> dict[str, Any]:
        return {
            "created_at": publish.now().isoformat(),
            "run_id": self.run_id,
            "base_model": {"path": str(base), "sha256": self._base_sha256(base),
                           "checked_on": str(served)},
            "data_window": dataset.stats["window"],
            "counts": {k: v for k, v in dataset.stats.items() if k != "window"},
            "metrics": {k: self.metrics.get(k)
                        for k in ("gate", "agreement", "seconds", "budget")},
            "gate": {"decision": "promoted", "reason": reason, "rule": rule},
            "train": self.metrics.get("train"),
        }


def _counts(dataset: Dataset) -> str:
    s = dataset.stats
    return (f"{s['episodes']} episodes → {s['train']} train, {s['heldout']} held-out, "
            f"{s['replay']} replay; {s['strategies']} strategies")


def say(message: str) -> None:
    print(f"learner: {message}", file=sys.stderr, flush=True)


def _renice(target: int) -> None:
    """Run at least ``target`` nice: training must not starve the proxy."""
    current = os.nice(0)
    if target > current:
        os.nice(target - current)


def _finish(config: Config, cycle: Cycle, outcome: Outcome) -> int:
    cycle.metrics["seconds_total"] = round(
        (publish.now() - cycle.started_at).total_seconds(), 3)
    row = publish.run_row(cycle.run_id, cycle.started_at, outcome.status,
                          version=outcome.version, decision=outcome.decision,
                          reason=outcome.reason, metrics=cycle.metrics)
    try:
        publish.record_run(config, row)
    except OSError as exc:
        say(f"could not record run {cycle.run_id}: {exc}")
    head = outcome.decision or outcome.status
    line = f"{head} {outcome.version}: {outcome.reason}" if outcome.version else \
        f"{head}: {outcome.reason}"
    print(line if outcome.exit_code == 0 else f"learner: failed: {line}",
          file=sys.stdout if outcome.exit_code == 0 else sys.stderr, flush=True)
    return outcome.exit_code


def cmd_train(config: Config, args: argparse.Namespace) -> int:
    cycle = Cycle(config, args.max_steps, args.cold)
    try:
        with publish.run_lock(config.state_dir):
            _renice(config.learner.nice)
            outcome = cycle.run()
    except Exception as exc:  # noqa: BLE001 - any failure becomes a run record and one line
        outcome = Outcome("failed", None, None, f"{type(exc).__name__}: {exc}", exit_code=1)
    return _finish(config, cycle, outcome)


def cmd_rollback(config: Config, args: argparse.Namespace) -> int:
    cycle = Cycle(config)
    try:
        with publish.run_lock(config.state_dir):
            old, new = publish.rollback(config.state_dir)
        outcome = Outcome("ok", "rollback", new, f"rolled back from {old} to {new}")
    except (RuntimeError, OSError) as exc:
        outcome = Outcome("failed", "rollback", None, str(exc), exit_code=1)
    return _finish(config, cycle, outcome)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    """Prints what it can; a broken pointer or manifest is named, not a traceback, and
    makes the exit code 1 (status is what an operator runs when something is wrong)."""
    state = config.state_dir
    try:
        current = publish.read_current(state)
    except (RuntimeError, OSError) as exc:
        print(f"current: unreadable: {exc}")
        return _status_rest(state, 1)
    if current is None:
        print("current: none")
        return _status_rest(state, 0)
    try:
        gate = publish.read_manifest(state, current.version).get("gate", {})
    except (OSError, ValueError, AttributeError) as exc:
        print(f"current: {current.version} (its manifest is unreadable: {exc})")
        return _status_rest(state, 1)
    print(f"current: {current.version} ({gate.get('reason', '')})")
    return _status_rest(state, 0)


def _status_rest(state: Path, code: int) -> int:
    try:
        print(f"versions: {', '.join(publish.versions(state)) or 'none'}")
    except OSError as exc:
        print(f"versions: unreadable: {exc}")
        return 1
    runs = publish.recent_runs(state)
    print("runs:" if runs else "runs: none")
    for r in runs:
        print(f"  {r.get('run_id')}  {r.get('status') or '-':<7} {r.get('decision') or '-':<9} "
              f"{r.get('version') or '-':<8} {r.get('reason') or ''}")
    return code


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "train": cmd_train, "rollback": cmd_rollback, "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learner",
                                     description="Tactician's learner: train, gate, publish.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run one training cycle"),
                            ("rollback", "point current.json at the previous version"),
                            ("status", "show the current version and recent runs")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", required=True, help="the proxy's YAML config file")
        if name == "train":
            cmd.add_argument("--max-steps", type=_positive, default=None,
                             help="train at most this many steps (default: 3 epochs from "
                                  "scratch, 2 when continuing the serving adapter); "
                                  "learner.max_train_seconds still applies")
            cmd.add_argument("--cold", action="store_true",
                             help="train from scratch instead of continuing the serving "
                                  "adapter")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"learner: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](config, args)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
