"""The learner end to end, unmocked: recorded rows in a real store → ``python -m learner``
subprocesses → a GGUF adapter that llama.cpp loads and that names the best strategy.

The world: three kinds of task with distinct vocabulary; each kind has two or three
approaches, stated in the first sentence of the answer, with different success rates.
The learner is never told any of this: it must recover the approaches from the answers
and learn which one works for which kind of task.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from learner import publish
from learner.dataset import build_dataset
from learner.pace import Pace
from proxy.config import Config, load_config
from proxy.hints.strategies import Strategy, StrategyCatalog, hint_text
from proxy.hints.text import words
from proxy.models import default_gguf, small_model_weights
from proxy.store import Store
from tests.servers import ServerThread, free_port

REPO = Path(__file__).resolve().parent.parent
KINDS: dict[str, dict[str, Any]] = {
    "parser": {
        "templates": [
            "Fix the failing unit test in the {a} parser after release {n}",
            "The {a} parser unit test started failing on build {n}, please fix it",
            "Repair the broken {a} parser test that fails since version {n}",
        ],
        "slots": ["json", "yaml", "csv", "toml", "xml", "ini", "markdown", "html"],
        "fresh": ["protobuf", "avro", "graphql", "jsonl"],
        "approaches": [
            ("Reproduced the failing test locally before touching any code.", 0.85),
            ("Rewrote the whole parser module from scratch.", 0.2),
        ],
    },
    "contract": {
        "templates": [
            "Summarize the {n}-page {a} contract for tomorrow's client meeting",
            "Write a short summary of the {a} agreement, it is {n} pages long",
            "Give the partners a brief of the {a} contract ({n} pages)",
        ],
        "slots": ["lease", "supplier", "employment", "licensing", "distribution", "consulting"],
        "fresh": ["franchise", "loan", "merger", "sponsorship"],
        "approaches": [
            ("Skimmed the section headings first, then summarized each section briefly.", 0.8),
            ("Read every clause in order and wrote a long summary.", 0.3),
            ("Copied the executive summary paragraph verbatim.", 0.15),
        ],
    },
    "query": {
        "templates": [
            "Speed up the slow {a} report query in the analytics warehouse",
            "The nightly {a} dashboard query takes {n} minutes, make it faster",
            "Optimize the {a} SQL query that times out in the reporting database",
        ],
        "slots": ["revenue", "churn", "inventory", "signup", "refund", "latency"],
        "fresh": ["payroll", "shipping", "forecast", "retention"],
        "approaches": [
            ("Checked the query plan before adding any index.", 0.9),
            ("Added an index on every column of the table.", 0.25),
        ],
    },
}
TRAIN_STEPS = 16  # batch 4: 64 examples, under one epoch; 8 steps gave 0.78 held-out
ACCURACY_BAR = 0.8  # measured: 1.0 (held-out, replay, 30 fresh tasks) in every run so far


def best_sentence(kind: str) -> str:
    return str(max(KINDS[kind]["approaches"], key=lambda a: a[1])[0])


def make_task(rng: random.Random, kind: str, fresh: bool = False) -> str:
    spec = KINDS[kind]
    slot = rng.choice(spec["fresh"] if fresh else spec["slots"])
    return str(rng.choice(spec["templates"]).format(a=slot, n=rng.randint(2, 90)))


def _call(episode: str, at: datetime, task: str, response: str, **kw: Any) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()), "episode_id": episode, "started_at": at,
        "finished_at": at + timedelta(seconds=3), "endpoint": "/v1/chat/completions",
        "provider": "openai", "model": "gpt-test", "stream": False, "status": 200,
        "partial": False, "task_text": task, "response_text": response, **kw,
    }


def _outcome(at: datetime, success: bool, *, request_id: str | None = None,
             episode_id: str | None = None) -> dict[str, Any]:
    return {"outcome_id": str(uuid.uuid4()), "received_at": at, "request_id": request_id,
            "episode_id": episode_id, "success": success}


def record_world(path: Path, episodes_per_kind: int, seed: int = 0,
                 drift: bool = False) -> None:
    """Rows as the proxy records them, including the noise a real store holds. With
    ``drift``, contracts stop coming halfway and what works for queries flips."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    calls: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    order = [k for k in KINDS for _ in range(episodes_per_kind)]
    rng.shuffle(order)
    if drift:
        order.sort(key=lambda k: k != "contract")  # stable: contracts first, rest shuffled
        order = order[:episodes_per_kind] + sorted(order[episodes_per_kind:],
                                                   key=lambda _: rng.random())
    for i, kind in enumerate(order):
        at = start + timedelta(minutes=20 * i)
        episode = f"ep-{i:04d}"
        sentence, p = rng.choice(KINDS[kind]["approaches"])
        if drift and kind == "query" and i >= len(order) // 2:
            p = 1.0 - p
        prefix = "I " + sentence[0].lower() + sentence[1:] if rng.random() < 0.3 else sentence
        first = _call(episode, at, make_task(rng, kind), f"{prefix} Then I checked the result.")
        calls.append(first)
        if rng.random() < 0.25:  # a follow-up turn of the same task
            calls.append(_call(episode, at + timedelta(minutes=1), "Thanks, also add a note.",
                               "Here is the note you asked for, added at the end."))
        success = rng.random() < p
        done = at + timedelta(minutes=5)
        if i % 2:
            outcomes.append(_outcome(done, not success, episode_id=episode))  # superseded
            outcomes.append(_outcome(done + timedelta(minutes=1), success, episode_id=episode))
        else:
            outcomes.append(_outcome(done, success, request_id=first["request_id"]))
    noise_at = start + timedelta(minutes=20 * len(order))
    calls += [_call(f"err-{i}", noise_at, "Fix the failing json parser test", "", status=502)
              for i in range(3)]
    calls += [_call(f"emb-{i}", noise_at, "embed me", "vector", endpoint="/v1/embeddings")
              for i in range(3)]
    calls += [_call(f"open-{i}", noise_at, make_task(rng, "query"),
                    "Added an index on every column of the table.") for i in range(3)]
    store = Store(path)
    store.insert("calls", calls)
    store.insert("outcomes", outcomes)
    store.close()


def write_config(folder: Path, port: int, **learner: Any) -> Path:
    raw = {
        "listen": f"127.0.0.1:{port}",
        # Never called: keeps the proxy from starting its embedded local model.
        "upstream": {"base_url": "http://127.0.0.1:9/v1"},
        "store": {"path": "tactician.duckdb", "flush_interval_ms": 20},
        "guidance": {"enabled": False},
        # The shipped default. No proxy listens here, so runs take learner.idle_threads.
        "learner": {"schedule": None, "threads": 1, "nice": 0, "keep_versions": 3,
                    "min_examples": 20, **learner},
    }
    path = folder / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_learner(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "learner", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def runs_of(config: Config) -> list[dict[str, Any]]:
    return publish.recent_runs(config.state_dir, limit=100)


@dataclass
class World:
    folder: Path
    port: int
    config_path: Path
    config: Config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("learner")
    record_world(folder / "tactician.duckdb", episodes_per_kind=40)
    port = free_port()
    path = write_config(folder, port, max_train_seconds=300)
    return World(folder, port, path, load_config(path))


def test_dataset_targets_follow_evidence_not_what_was_used(world: World) -> None:
    store = Store(world.config.store_path, read_only=True)
    try:
        data = build_dataset(store, world.config, progress=False)
    finally:
        store.close()
    s = data.stats
    assert s["episodes"] == 120 and s["no_outcome"] == 3  # errors and embeddings ignored
    assert s["strategies"] == 7  # "I reproduced ..." is the same strategy as "Reproduced ..."
    assert s["train"] + s["heldout"] + s["thin_evidence"] == 120
    assert 8 <= s["heldout"] <= 30 and 0 < s["replay"] <= s["train"] // 2 + 1
    assert s["window"]["from"] < s["window"]["to"]
    best_labels = {k: _label_of(data.catalog, best_sentence(k)) for k in KINDS}
    for items in (data.train_items, data.heldout_items):
        right = sum(it.label == best_labels[_kind_of(it.episode.task)] for it in items)
        assert right >= 0.9 * len(items)
    # Failures teach: episodes that used a losing approach are labelled with the winner.
    losers = [it for it in data.train_items if it.episode.sid != it.target]
    assert len(losers) > 20
    mean_weight = sum(ex.weight for ex in data.train) / len(data.train)
    assert mean_weight == pytest.approx(1.0)
    assert data.train[0].prompt.endswith("<|im_start|>assistant\n")
    assert data.train[0].completion.endswith("<|im_end|>")
    assert max(it.episode.started_at for it in data.replay_items) <= min(
        it.episode.started_at for it in data.train_items[len(data.train_items) // 2 :])


def test_targets_follow_drift_and_old_kinds_stay_in_replay(tmp_path: Path) -> None:
    """Halfway, adding indexes starts to beat reading the plan; contracts were only
    seen early. The model must be taught the new winner for every query episode (old
    ones too) and still rehearse contracts."""
    # 80 per kind: neighbourhoods are per phrasing template (~0.06 cosine across
    # templates), so at 40 a template holds ~10 queries and two lucky pre-drift
    # successes of the old winner legitimately outweigh five of seven for the new one.
    record_world(tmp_path / "tactician.duckdb", episodes_per_kind=80, drift=True)
    raw = yaml.safe_load(write_config(tmp_path, 1).read_text())
    config = load_config({**raw, "store": {"path": str(tmp_path / "tactician.duckdb")},
                          "guidance": {"enabled": False, "half_life": 20}})
    store = Store(config.store_path, read_only=True)
    try:
        data = build_dataset(store, config, progress=False)
    finally:
        store.close()
    new_best = _label_of(data.catalog, "Added an index on every column of the table.")
    queries = [it for it in data.train_items if _kind_of(it.episode.task) == "query"]
    assert sum(it.label == new_best for it in queries) >= 0.9 * len(queries)
    contracts = [it for it in data.train_items if _kind_of(it.episode.task) == "contract"]
    old_best = _label_of(data.catalog, best_sentence("contract"))
    assert sum(it.label == old_best for it in contracts) >= 0.8 * len(contracts)
    assert min(it.weight for it in contracts) > 0.1
    assert {_kind_of(it.episode.task) for it in data.replay_items} >= {"contract", "query"}


def test_phrasings_that_answer_each_others_hints_are_one_target(tmp_path: Path) -> None:
    """The good approach is described two ways, in no shared words; hinted either way,
    the answer uses either. The learner must see one approach, named as first seen."""
    rng = random.Random(3)
    first, second = ("Reproduced the failing test locally before touching any code.",
                     "Approach: bisect by running the broken check first, then edit.")
    bad = "Rewrote the whole parser module from scratch."
    start = datetime(2026, 11, 1, tzinfo=UTC)
    calls, outcomes = [], []
    for i in range(90):
        at = start + timedelta(minutes=20 * i)
        hint = None if i < 6 else (first, second, bad)[i % 3]
        used = hint if hint and rng.random() < 0.9 else rng.choice((first, bad))
        if used in (first, second):
            used = rng.choice((first, second)) if i >= 6 else first
        call = _call(f"ep-{i:03d}", at, make_task(rng, "parser"), f"{used} Then done.",
                     hint_text=hint_text(Strategy("x", hint, "x")) if hint else None)
        calls.append(call)
        p = 0.2 if used == bad else 0.85
        outcomes.append(_outcome(at, rng.random() < p, request_id=call["request_id"]))
    store = Store(tmp_path / "tactician.duckdb")
    store.insert("calls", calls)
    store.insert("outcomes", outcomes)
    store.close()
    config = load_config({"store": {"path": str(tmp_path / "tactician.duckdb")},
                          "guidance": {"enabled": False}})
    store = Store(config.store_path, read_only=True)
    try:
        data = build_dataset(store, config, progress=False)
    finally:
        store.close()
    one, two = (data.catalog.match(x) for x in (first, second))
    assert one and two and one != two  # two strategies by their words...
    assert data.catalog.renames() == {two: one}  # ...one approach by the hints
    items = [*data.train_items, *data.heldout_items]
    assert items and all(it.target == one for it in items)
    assert not any(it.episode.sid == two for it in items)


def _label_of(catalog: StrategyCatalog, sentence: str) -> str:
    key = set(words(sentence))
    matches = [s.label for s in catalog if set(words(s.text)) - {"i"} == key - {"i"}]
    assert len(matches) == 1, (sentence, [s.text for s in catalog])
    return matches[0]


def _kind_of(task: str) -> str:
    toks = set(words(task))
    return "parser" if "parser" in toks else "query" if "query" in toks else "contract"


def test_too_little_data_is_a_clean_noop(tmp_path: Path) -> None:
    record_world(tmp_path / "tactician.duckdb", episodes_per_kind=2)
    cfg_path = write_config(tmp_path, free_port(), max_train_seconds=5)
    proc = run_learner("train", "--config", str(cfg_path))
    assert proc.returncode == 0, proc.stderr
    assert "not enough data" in proc.stdout and "nothing to do" in proc.stdout
    config = load_config(cfg_path)
    assert publish.read_current(config.state_dir) is None
    (run,) = runs_of(config)
    assert run["status"] == "skipped" and run["decision"] is None
    store = Store(config.store_path, read_only=True)
    try:
        rows = store.query("SELECT status FROM learner_runs WHERE run_id = ?", [run["run_id"]])
    finally:
        store.close()
    assert rows == [{"status": "skipped"}]


def test_training_gets_what_the_run_budget_leaves(tmp_path: Path) -> None:
    from learner.cli import MIN_TRAIN_SECONDS, SLACK_SECONDS, VERIFY_SAMPLE, Cycle

    def budget(run_s: float, train_s: float, elapsed: float, eval_s: float) -> float:
        config = load_config({"learner": {"max_run_seconds": run_s,
                                          "max_train_seconds": train_s}})
        cycle = Cycle(config, started=time.monotonic() - elapsed)
        return cycle._train_budget(eval_s)

    reserve = 1.25 * 40 + VERIFY_SAMPLE * 1.0 + SLACK_SECONDS
    assert budget(600, 600, 30, 40) == pytest.approx(600 - 30 - reserve, abs=1)
    assert budget(600, 100, 30, 40) == 100  # max_train_seconds still caps it
    assert budget(100, 600, 90, 40) == MIN_TRAIN_SECONDS  # overrun rather than learn nothing
    assert budget(100, 20, 90, 40) == 20


def test_the_unsloth_checkpoint_is_cached_in_the_state_folder(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from learner.cli import Cycle
    from learner.train import Example

    config = load_config({"store": {"path": str(tmp_path / "t.duckdb")}})
    dataset = SimpleNamespace(train=[Example("p", "c")] * 3)
    _, settings = Cycle(config)._plan(dataset, None, 60.0)  # type: ignore[arg-type]
    # Not under the run's work folder, which is deleted after every run.
    assert settings.cache_dir == config.state_dir / "cache"


def test_bad_config_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: {max_train_secs: 3}\n")
    proc = run_learner("train", "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "max_train_secs" in proc.stderr


@pytest.fixture(scope="module")
def first_run(world: World) -> subprocess.CompletedProcess[str]:
    # A fixed number of steps keeps the result independent of how busy the machine is.
    return run_learner("train", "--config", str(world.config_path), "--max-steps",
                       str(TRAIN_STEPS))


@pytest.mark.slow
def test_train_publishes_an_adapter_that_names_the_best_strategy(
    world: World, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    assert first_run.stdout.startswith("promoted v000001: first adapter")
    state = world.config.state_dir
    current = publish.read_current(state)
    assert current is not None and current.version == "v000001"
    pointer = json.loads((state / "adapters" / "current.json").read_text())
    assert pointer == {"version": "v000001", "adapter": "v000001/adapter.gguf",
                       "catalog": "v000001/catalog.json"}
    manifest = publish.read_manifest(state, "v000001")
    assert manifest["version"] == "v000001" and len(manifest["base_model"]["sha256"]) == 64
    # Checked on the weights the proxy evaluates, trained on the model file itself.
    assert manifest["base_model"]["checked_on"].endswith(".F16.gguf")
    assert manifest["base_model"]["path"] == str(default_gguf())
    assert manifest["gate"]["decision"] == "promoted" and manifest["gate"]["rule"]
    assert manifest["data_window"]["from"].startswith("2026-11-01")
    assert manifest["metrics"]["agreement"]["decision"] >= 0.9
    assert manifest["train"]["steps"] >= 1 and manifest["counts"]["train"] > 50
    catalog = StrategyCatalog.from_json(current.catalog.read_text())
    assert len(catalog) == 7
    hits = _fresh_task_hits(world, current.adapter, catalog)
    assert sum(hits) >= ACCURACY_BAR * len(hits), hits
    (run,) = runs_of(world.config)
    assert run["decision"] == "promoted" and run["version"] == "v000001"
    metrics = json.loads(run["metrics"])
    assert metrics["gate"]["new"]["heldout"] >= ACCURACY_BAR
    # No adapter served yet: evaluation time was probed with the bare model.
    assert metrics["seconds"]["baseline"] > 0 and metrics["budget"]["eval_seconds"] > 0
    assert metrics["budget"]["train_seconds"] <= 300  # learner.max_train_seconds
    # No proxy listens at the config's address: nothing to keep a core for, so the run
    # scored and trained on every core it may use, not on learner.threads (1).
    idle = Pace(world.config).idle_threads
    assert metrics["threads"] == {"baseline": idle, "gate": idle}
    assert metrics["train"]["steps_by_threads"] == {str(idle): metrics["train"]["steps"]}
    store = Store(world.config.store_path, read_only=True)
    try:
        rows = store.query("SELECT decision FROM learner_runs WHERE run_id = ?",
                           [run["run_id"]])
    finally:
        store.close()
    assert rows == [{"decision": "promoted"}]


def _fresh_task_hits(world: World, adapter: Path, catalog: StrategyCatalog) -> list[bool]:
    """Greedy labels from llama.cpp (as the proxy serves) on tasks never recorded."""
    from proxy.hints.llm import SmallModel

    rng = random.Random(7)
    model = SmallModel(small_model_weights(world.config), threads=1, max_tokens=12)
    model.load(adapter, "test", catalog)
    hits = []
    try:
        for kind in KINDS:
            for _ in range(10):
                label, _version = model.submit(make_task(rng, kind, fresh=True)).result()
                sid = catalog.resolve(label)
                hits.append(sid is not None and sid == catalog.resolve(
                    _label_of(catalog, best_sentence(kind))))
    finally:
        model.close()
    return hits


@pytest.mark.slow
def test_gate_refuses_a_worse_adapter_through_the_snapshot_route(
    world: World, first_run: subprocess.CompletedProcess[str]
) -> None:
    """A proxy holds the store; a 1-step adapter trained from scratch (barely trained)
    must not replace v1."""
    from proxy.app import create_app

    assert first_run.returncode == 0
    pointer = world.config.state_dir / "adapters" / "current.json"
    before = pointer.read_bytes()
    with ServerThread(create_app(world.config), port=world.port):
        proc = run_learner("train", "--config", str(world.config_path), "--max-steps", "1",
                           "--cold")
        run = runs_of(world.config)[0]
        # The learner could not write the store; the proxy ingests its run record.
        ingested = world.config.state_dir / "runs" / "ingested" / f"{run['run_id']}.json"
        deadline = time.monotonic() + 30
        while not ingested.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("refused: worse than current"), proc.stdout
    assert pointer.read_bytes() == before
    assert publish.versions(world.config.state_dir) == ["v000001"]
    metrics = json.loads(run["metrics"])
    assert run["decision"] == "refused" and run["version"] is None
    assert metrics["counts"]["source"] == "snapshot" and metrics["train"]["steps"] == 1
    assert metrics["gate"]["current_version"] == "v000001"
    # Nothing was recorded since v000001 was promoted: its labels from that night's gate
    # cover every evaluation task, so it scores as it did then without being asked again,
    # and the scoring time the budget needs is probed on the bare model instead.
    promoted = next(json.loads(r["metrics"]) for r in runs_of(world.config)
                    if r["version"] == "v000001")
    assert metrics["gate"]["current"] == promoted["gate"]["new"]
    assert metrics["baseline_labels_reused"] >= metrics["gate"]["current"]["n_heldout"] > 0
    assert metrics["budget"]["eval_seconds"] > 0
    assert metrics["gate"]["new"]["heldout"] < metrics["gate"]["current"]["heldout"]
    assert not list((world.config.state_dir / "snapshots").glob("*.duckdb*"))
    assert ingested.is_file()
    store = Store(world.config.store_path, read_only=True)
    try:
        rows = store.query("SELECT decision FROM learner_runs WHERE run_id = ?",
                           [run["run_id"]])
    finally:
        store.close()
    assert rows == [{"decision": "refused"}]


@pytest.mark.slow
def test_rollback_restores_the_previous_version(
    world: World, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0
    state = world.config.state_dir
    v1 = publish.read_current(state)
    assert v1 is not None
    manifest = {**publish.read_manifest(state, v1.version), "run_id": "manual"}
    v2 = publish.publish_version(state, v1.adapter, v1.catalog.read_text(), manifest, keep=3)
    assert publish.read_current(state).version == v2  # type: ignore[union-attr]
    proc = run_learner("rollback", "--config", str(world.config_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rollback {v1.version}: rolled back from {v2} to {v1.version}"
    assert publish.read_current(state).version == v1.version  # type: ignore[union-attr]
    assert runs_of(world.config)[0]["decision"] == "rollback"
    status = run_learner("status", "--config", str(world.config_path))
    assert status.returncode == 0 and status.stdout.startswith(f"current: {v1.version}")
    again = run_learner("rollback", "--config", str(world.config_path))
    assert again.returncode == 1 and "no kept version older" in again.stderr


@pytest.mark.slow
def test_the_next_run_continues_the_serving_adapter(
    world: World, first_run: subprocess.CompletedProcess[str]
) -> None:
    """v000001 was published with its PEFT weights; the next run starts from them (its
    first loss is a fraction of a cold start's) and, with no episode newer than
    v000001's data window, trains on a rehearsal sample only."""
    from learner.warm import WARM_MIN_REPLAY

    assert first_run.returncode == 0
    state = world.config.state_dir
    publish.point_current(state, "v000001")  # whatever the tests before left current at
    assert publish.peft_weights(state, "v000001") is not None
    proc = run_learner("train", "--config", str(world.config_path), "--max-steps", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing v000001 on" in proc.stderr
    runs = runs_of(world.config)
    cold = next(r for r in runs if r["version"] == "v000001" and r["decision"] == "promoted")
    warm, first = (json.loads(r["metrics"])["train"] for r in (runs[0], cold))
    assert warm["init"] == "v000001" and first["init"] is None
    assert warm["examples"] == min(first["examples"], WARM_MIN_REPLAY)
    assert warm["loss_first"] < 0.3 * first["loss_first"], (warm, first)
    # Weights that cannot be read do not stop the nightly job: it starts from scratch.
    publish.point_current(state, "v000001")
    weights = publish.peft_weights(state, "v000001")
    assert weights is not None
    (weights / "adapter_model.safetensors").write_bytes(b"not safetensors")
    proc = run_learner("train", "--config", str(world.config_path), "--max-steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot start from the adapter" in proc.stderr
    assert "training from scratch instead" in proc.stderr
    assert json.loads(runs_of(world.config)[0]["metrics"])["train"]["init"] is None
