"""Strict, typed config: unknown keys fail, ${ENV} resolves, every key is documented."""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, cast, get_args, get_origin, get_type_hints

import pytest

from proxy import learning
from proxy.config import Config, Range, documented_keys, load_config
from proxy.errors import ConfigError
from proxy.learning import LearnerJobs
from proxy.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent


def test_default_config_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TACTICIAN_UPSTREAM_URL", "OPENAI_API_KEY", "TACTICIAN_OUTCOME_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.listen == "127.0.0.1:8787" and cfg.port == 8787
    assert cfg.upstream.base_url is None and cfg.upstream.api_key is None
    assert cfg.store_path == ROOT / "data" / "tactician.duckdb"
    assert cfg.state_dir == ROOT / "data" / "tactician.state"
    assert cfg.guidance.enabled is True and cfg.outcomes.token is None


def test_minimal_public_keys_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    cfg = load_config({
        "listen": "0.0.0.0:9000",
        "upstream": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"},
        "store": {"path": "/tmp/x.duckdb"},
        "guidance": {"enabled": False},
        "outcomes": {"token": "abc"},
    })
    assert cfg.upstream.api_key == "sk-1" and cfg.host == "0.0.0.0"
    assert cfg.state_dir == Path("/tmp/x.state")


@pytest.mark.parametrize(("raw", "message"), [
    ({"listne": "x"}, "unknown config key: listne"),
    ({"guidance": {"budget": 1}}, "unknown config key: guidance.budget"),
    ({"store": {"redact": {"phones": True}}}, "unknown config key: store.redact.phones"),
    ({"guidance": {"meaning_f16": False}},
     "unknown config key: guidance.meaning_f16 (renamed guidance.model_f16:"),
    ({"guidance": {"holdout": 2}}, "guidance.holdout"),
    ({"guidance": {"mode": "magic"}}, "guidance.mode"),
    ({"guidance": {"min_success": 1.5}}, "guidance.min_success"),
    ({"guidance": {"batch_threads": 0}}, "guidance.batch_threads"),
    ({"guidance": {"explore_tries": -1}}, "guidance.explore_tries"),
    ({"guidance": {"explore_after": -1}}, "explore_after"),
    ({"guidance": {"enabled": "yes"}}, "guidance.enabled"),
    ({"listen": "nope"}, "listen"),
    ({"learner": {"schedule": "every night"}}, "learner.schedule"),
    ({"store": {"redact": {"patterns": ["("]}}}, "store.redact.patterns[0]"),
    ({"upstream": {"base_url": "http://${NOPE_UNSET_VAR}/v1"}}, "NOPE_UNSET_VAR"),
    ({"routes": [{"model": "c*"}]}, "routes[0]"),
])
def test_bad_config_is_rejected(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    assert message in str(info.value)


def test_env_default_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT_X", raising=False)
    assert load_config({"listen": "127.0.0.1:${PORT_X:-9999}"}).port == 9999


def test_config_is_frozen() -> None:
    cfg = load_config({})
    with pytest.raises(AttributeError):
        cfg.listen = "x"  # type: ignore[misc]


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_\[\].]+)`", doc))
    missing = [k for k in documented_keys() if k not in documented]
    assert not missing, f"undocumented config keys: {missing}"


# -- learner.schedule: a schedule croniter cannot follow fails at load -------------------

@pytest.mark.parametrize("schedule", ["61 * * * *", "a b c d e", "0 0 31 2 *", "*/0 * * * *"])
def test_schedule_croniter_cannot_follow_is_rejected(schedule: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"learner": {"schedule": schedule}})
    assert "learner.schedule" in str(info.value)


def test_valid_schedules_load() -> None:
    for schedule in ("0 3 * * *", "*/15 2-4 * * mon-fri", "0 3 29 2 *"):
        assert load_config({"learner": {"schedule": schedule}}).learner.schedule == schedule


# The learner-jobs loop lives in proxy/learning.py; its tests sit here beside the schedule
# validation that keeps it from failing in the first place.

def _jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LearnerJobs, list[int]]:
    monkeypatch.setattr(learning, "INGEST_EVERY_S", 0.01)
    cfg = dataclasses.replace(load_config({"store": {"path": str(tmp_path / "s.duckdb")}}),
                              source_path=str(tmp_path / "cfg.yaml"))
    jobs = LearnerJobs(cfg, cast(Recorder, None))
    ingested: list[int] = []
    monkeypatch.setattr(jobs, "ingest", lambda: ingested.append(1) or 0)
    return jobs, ingested


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def test_learner_jobs_survive_a_schedule_croniter_rejects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    jobs, ingested = _jobs(tmp_path, monkeypatch)
    # Past load-time validation (a config built in code), croniter raises in the thread.
    bad = dataclasses.replace(jobs.config.learner, schedule="61 * * * *")
    jobs.config = dataclasses.replace(jobs.config, learner=bad)
    jobs.start()
    try:
        assert _wait_for(lambda: len(ingested) >= 3), "run records are no longer ingested"
        assert jobs._thread.is_alive() and jobs.next_run is None
        assert any(r.exc_info for r in caplog.records if r.name == "tactician.learning")
    finally:
        jobs.stop()


def test_learner_jobs_survive_a_failing_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    jobs, ingested = _jobs(tmp_path, monkeypatch)
    fires = iter([datetime(2000, 1, 1, tzinfo=UTC)])  # due at once, then next year
    monkeypatch.setattr(jobs, "_next_fire",
                        lambda: next(fires, datetime.now(UTC) + timedelta(days=365)))
    runs: list[int] = []

    def run_once() -> int:
        runs.append(1)
        raise OSError("nice: not found")

    monkeypatch.setattr(jobs, "run_once", run_once)
    jobs.start()
    try:
        assert _wait_for(lambda: len(runs) == 1 and len(ingested) >= 3)
        assert jobs._thread.is_alive() and len(runs) == 1  # rescheduled, not retried per tick
        assert jobs.next_run is not None and jobs.next_run > datetime.now(UTC)
        assert any("nice: not found" in r.getMessage() or (r.exc_info and "nice" in
                   str(r.exc_info[1])) for r in caplog.records)
    finally:
        jobs.stop()


# -- ${VAR}: an unset or empty reference is an absent key, for every key -----------------

def _nested(dotted: str, value: object) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


def _get(cfg: object, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


ENV_KEYS = ["listen", "store.path", "store.state_dir", "guidance.enabled", "guidance.mode",
            "guidance.task_source", "guidance.similar_k", "upstream.timeout_s",
            "upstream.api_key", "store.redact.emails", "store.redact.patterns", "upstream",
            "learner.schedule", "logging.level"]


@pytest.mark.parametrize("key", ENV_KEYS)
@pytest.mark.parametrize("env", [None, ""], ids=["unset", "empty"])
def test_unset_or_empty_env_reference_means_the_default(
        key: str, env: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if env is None:
        monkeypatch.delenv("TACT_TEST_VAR", raising=False)
    else:
        monkeypatch.setenv("TACT_TEST_VAR", env)
    cfg = load_config(_nested(key, "${TACT_TEST_VAR}"))
    assert _get(cfg, key) == _get(load_config({}), key)
    assert cfg.port == 8787 and cfg.store_path == load_config({}).store_path


def test_unset_env_reference_for_a_required_key_names_key_and_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TACT_TEST_MODEL", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config({"routes": [{"model": "${TACT_TEST_MODEL}", "litellm_model": "x/y"}]})
    assert "routes[0].model" in str(info.value) and "TACT_TEST_MODEL" in str(info.value)


def test_unset_env_reference_as_a_list_item_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TACT_TEST_VAR", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config({"store": {"redact": {"patterns": ["x+", "${TACT_TEST_VAR}"]}}})
    assert "store.redact.patterns[1]" in str(info.value)


def test_empty_variable_takes_the_inline_default_and_fails_inside_a_string(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TACT_TEST_PORT", "")
    assert load_config({"listen": "127.0.0.1:${TACT_TEST_PORT:-9999}"}).port == 9999
    with pytest.raises(ConfigError, match=r"listen: .*TACT_TEST_PORT"):
        load_config({"listen": "127.0.0.1:${TACT_TEST_PORT}"})


def test_env_references_expand_for_every_kind_of_key(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"T_MODE": "retrieval", "T_SOURCE": "last_user", "T_ON": "false", "T_K": "7",
           "T_HOLD": "0.25", "T_PAT": "secret-[0-9]+"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    g = load_config({"guidance": {"mode": "${T_MODE}", "task_source": "${T_SOURCE}",
                                  "enabled": "${T_ON}", "similar_k": "${T_K}",
                                  "holdout": "${T_HOLD}"},
                     "store": {"redact": {"patterns": ["${T_PAT}"]}}})
    assert (g.guidance.mode, g.guidance.task_source) == ("retrieval", "last_user")
    assert g.guidance.enabled is False and g.guidance.similar_k == 7
    assert g.guidance.holdout == 0.25 and g.store.redact.patterns == ("secret-[0-9]+",)
    monkeypatch.setenv("T_MODE", "magic")
    with pytest.raises(ConfigError, match=r"guidance\.mode: must be one of"):
        load_config({"guidance": {"mode": "${T_MODE}"}})


# -- numbers: integers are integers, and meaningless values are rejected -----------------

@pytest.mark.parametrize(("raw", "message"), [
    ({"guidance": {"memory_size": 0}}, "guidance.memory_size"),
    ({"guidance": {"similar_k": 2.9}}, "guidance.similar_k: expected an integer"),
    ({"guidance": {"similar_k": True}}, "guidance.similar_k: expected an integer"),
    ({"guidance": {"similar_k": "2.9"}}, "guidance.similar_k: expected an integer"),
    ({"guidance": {"similar_k": 0}}, "guidance.similar_k"),
    ({"guidance": {"seed": 1.5}}, "guidance.seed"),
    ({"guidance": {"cache_size": 0}}, "guidance.cache_size"),
    ({"guidance": {"max_hint_tokens": 0}}, "guidance.max_hint_tokens"),
    ({"guidance": {"adapter_poll_ms": 0}}, "guidance.adapter_poll_ms"),
    ({"guidance": {"min_evidence": -1}}, "guidance.min_evidence"),
    ({"guidance": {"min_similarity": 20}}, "guidance.min_similarity"),
    ({"guidance": {"half_life": -1}}, "guidance.half_life"),
    ({"guidance": {"optimism": -0.1}}, "guidance.optimism"),
    ({"guidance": {"pessimism": -0.5}}, "guidance.pessimism"),
    ({"guidance": {"holdout": float("nan")}}, "guidance.holdout"),
    ({"guidance": {"budget_ms": float("inf")}}, "guidance.budget_ms"),
    ({"limits": {"max_body_mb": -1}}, "limits.max_body_mb"),
    ({"limits": {"max_body_mb": 0}}, "limits.max_body_mb"),
    ({"limits": {"max_body_mb": 10**400}}, "limits.max_body_mb"),  # beyond any float
    ({"listen": "127.0.0.1:99999"}, "listen"),
    ({"upstream": {"timeout_s": 0}}, "upstream.timeout_s"),
    ({"upstream": {"connect_timeout_s": -1}}, "upstream.connect_timeout_s"),
    ({"store": {"flush_interval_ms": 0}}, "store.flush_interval_ms"),
    ({"store": {"queue_size": 0}}, "store.queue_size"),
    ({"local_model": {"n_ctx": -1}}, "local_model.n_ctx"),
    ({"local_model": {"threads": 0}}, "local_model.threads"),
    ({"local_model": {"startup_timeout_s": 0}}, "local_model.startup_timeout_s"),
    ({"learner": {"threads": 0}}, "learner.threads"),
    ({"learner": {"nice": 20}}, "learner.nice"),
    ({"learner": {"keep_versions": 0}}, "learner.keep_versions"),
    ({"learner": {"tolerance": 2}}, "learner.tolerance"),
    ({"learner": {"min_examples": 0}}, "learner.min_examples"),
    ({"learner": {"max_run_seconds": 0}}, "learner.max_run_seconds"),
])
def test_out_of_range_numbers_are_rejected(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    assert message in str(info.value)


def test_boundary_numbers_load() -> None:
    cfg = load_config({"listen": "127.0.0.1:0",  # tests bind an ephemeral port
                       "guidance": {"similar_k": 3.0, "half_life": 0, "min_evidence": 0,
                                    "seed": -5, "explore_tries": 0},
                       "local_model": {"n_ctx": 0}, "learner": {"nice": -20, "tolerance": -1},
                       "limits": {"max_body_mb": 0.01}})
    assert cfg.port == 0 and cfg.guidance.similar_k == 3
    assert isinstance(cfg.guidance.similar_k, int) and cfg.local_model.n_ctx == 0
    assert load_config({"listen": "[::1]:65535"}).port == 65535


def _ranges(cls: type[Any] = Config, prefix: str = "") -> list[tuple[str, Range]]:
    out: list[tuple[str, Range]] = []
    hints = get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_ranges(cast(type[Any], tp), f"{prefix}{f.name}."))
        elif get_origin(tp) is Annotated:
            out.extend((f"{prefix}{f.name}", m) for m in get_args(tp)[1:] if isinstance(m, Range))
    return out


def test_every_range_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m[0]: m[1] for m in re.findall(r"^\| `([a-z_.]+)` \|(.*)$", doc, re.M)}
    wrong = [key for key, bounds in _ranges()
             if f"Range: `{bounds.describe()}`" not in rows.get(key, "")]
    assert _ranges() and not wrong, f"ranges missing from docs/configuration.md: {wrong}"


def test_config_reference_tables_are_unbroken() -> None:
    # A row after a paragraph or blank line renders as plain text, not as a table row.
    lines = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    stray = [row for before, row in itertools.pairwise(lines)
             if row.startswith("| `") and not before.startswith("|")]
    assert not stray, f"table rows outside a table: {stray}"


# -- the other docs this change touched -----------------------------------------------------

def test_architecture_module_table_lists_every_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    table = [line for line in doc.splitlines() if line.startswith("| ") and ".py`" in line]
    missing = []
    for path in sorted([*(ROOT / "proxy").rglob("*.py"), *(ROOT / "learner").rglob("*.py")]):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py":
            continue
        folder = f"`{rel.parent.as_posix()}/"
        if not any(folder in line and re.search(rf"[`/]{re.escape(path.name)}`", line)
                   for line in table):
            missing.append(rel.as_posix())
    assert not missing, f"modules missing from docs/architecture.md's table: {missing}"


def test_architecture_provider_values_are_the_recorded_ones() -> None:
    from proxy.app import build_targets

    doc = (ROOT / "docs" / "architecture.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| provider |"))
    cfg = load_config({"upstream": {"anthropic_base_url": "http://a/v1"}})
    # No upstream.base_url: the embedded local model is the target named "openai".
    recorded = {*build_targets(cfg, "http://127.0.0.1:1/v1"), "litellm"}
    assert set(re.findall(r"`([a-z]+)`", row)) == recorded


def test_readme_learner_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    import learner.cli as cli

    def not_here(path: object) -> None:
        raise ConfigError("not loaded in this test")

    monkeypatch.setattr(cli, "load_config", not_here)
    readme = (ROOT / "README.md").read_text()
    spans = re.findall(r"`(?:nice -n \d+ )?python -m\s+learner\s([^`]*)`", readme)
    commands = [span.split() for span in spans if "…" not in span]
    assert commands
    for argv in commands:
        assert cli.main(argv) == 2, argv  # parsed (an argparse error raises SystemExit)
