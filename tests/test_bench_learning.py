"""End to end: the learning benchmark's harness on a tiny world, through the real proxy."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.harness.processes import arm_guidance, last_line, proxy_config, run_learner
from bench.learning import main, parse_args, scale_world
from bench.replay import main as replay_main
from bench.replay import replay, replay_config
from bench.sim import parse_world

TINY_WORLD = """
name: tiny
seed: 5
compliance: 0.9
agent_system_prompt: "You are a helpful office agent."
strategies:
  - id: careful
    names: ["careful double check", "double-check everything"]
    says: ["I did a careful double check of every item before answering."]
  - id: hasty
    names: ["hasty single pass", "one quick pass"]
    says: ["I made a hasty single pass over the items and answered."]
families:
  - id: audit
    domain: finance
    templates: ["Audit the {month} receipts of {team}."]
    slots:
      month: ["March", "June", "October"]
      team: ["sales", "legal", "facilities"]
    prior: {hasty: 0.7, careful: 0.3}
    success: {careful: 0.9, hasty: 0.2}
  - id: rota
    domain: planning
    turns: 2
    templates: ["Build the on-call rota for {team} over {weeks} weeks."]
    slots:
      team: ["the helpdesk", "the data team", "ops"]
      weeks: ["two", "four"]
    prior: {hasty: 0.6, careful: 0.4}
    success: {careful: 0.8, hasty: 0.3}
phases:
  - name: first
    days: 1
    requests: 40
    mix: {audit: 1, rota: 1}
  - name: second
    days: 1
    requests: 40
    mix: {audit: 1, rota: 1}
    changes:
      rota: {success: {hasty: 0.85, careful: 0.3}}
"""

# Every metric name of WORLD_SPEC.md, "The metrics".
SPEC_METRICS = (
    "control_success", "guided_success", "uplift", "coverage", "accuracy", "transfer",
    "retention", "adaptation", "hint_latency_ms", "retrain_seconds",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_world(directory: Path) -> Path:
    """TINY_WORLD as the YAML file the benchmark commands take."""
    world = directory / "tiny.yaml"
    world.write_text(TINY_WORLD, encoding="utf-8")
    return world


def run_bench(tmp_path: Path, *extra: str) -> dict[str, Any]:
    world = tiny_world(tmp_path)
    out, png = tmp_path / "report.json", tmp_path / "curves.png"
    argv = ["--world", str(world), "--out", str(out), "--plot", str(png), *extra]
    assert main(argv) == 0
    assert png.read_bytes().startswith(PNG_MAGIC)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


def assert_complete(report: dict[str, Any]) -> None:
    metrics = report["metrics"]
    scopes = [metrics["overall"], *metrics["phases"].values()]
    assert list(metrics["phases"]) == ["first", "second"]
    for scope in scopes:
        assert set(SPEC_METRICS) <= scope.keys()
        for name in ("control_success", "guided_success"):
            assert 0.0 <= scope[name] <= 1.0
    assert report["arms"]["control"]["errors"] == 0
    assert report["arms"]["guided"]["errors"] == 0
    assert report["command"].startswith("python -m bench.learning --world ")
    reach = report["reachable_accuracy"]
    assert list(reach) == ["first", "second", "overall"]
    assert all(0.0 <= v <= 1.0 for v in reach.values())


def test_retrieval_only_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_bench(tmp_path, "--guidance", "retrieval-only")
    assert_complete(report)
    second = report["metrics"]["phases"]["second"]
    assert second["coverage"] > 0
    assert second["tasks"] == 40 and second["hint_latency_ms"]["calls"] > 40  # rota: 2 turns
    assert report["metrics"]["overall"]["adaptation"].keys() == {"rota@second"}
    # The control arm never hints and never trains; retrieval-only needs no learner.
    assert report["arms"]["control"]["named"] == 0
    assert [r["status"] for r in report["retrain"]] == ["skipped", "skipped"]
    assert report["metrics"]["overall"]["retrain_seconds"] == []
    printed = capsys.readouterr().out
    assert "guided_success" in printed and "reproduce: python -m bench.learning" in printed
    # The offline replay (bench.replay) must give what the real proxy gave, or the
    # engine tuning done with it would not carry over.
    offline = replay(parse_world(TINY_WORLD), replay_config([]).guidance)
    for scope in offline.phases:
        online = report["metrics"]["phases"][scope.scope]
        for name in ("guided_success", "control_success", "coverage", "accuracy",
                     "adaptation"):
            assert online[name] == getattr(scope, name), (scope.scope, name)


def test_another_seed_and_guidance_settings_reach_the_guided_arm(tmp_path: Path) -> None:
    """--seed runs another instance of the world (the replay gives its numbers too);
    --set passes a guidance key to the guided arm's proxy: with evidence never enough
    to act on, it never hints."""
    seeded = replace(parse_world(TINY_WORLD), seed=3)
    report = run_bench(tmp_path, "--guidance", "retrieval-only", "--seed", "3")
    assert report["seed"] == 3 and report["settings"] == {}
    offline = replay(seeded, replay_config([]).guidance)
    for scope in offline.phases:
        online = report["metrics"]["phases"][scope.scope]
        assert online["guided_success"] == scope.guided_success, scope.scope
    assert offline.phases[0].guided_success != replay(
        parse_world(TINY_WORLD), replay_config([]).guidance).phases[0].guided_success
    report = run_bench(tmp_path, "--guidance", "retrieval-only",
                       "--set", "min_evidence=100000")
    assert report["settings"] == {"min_evidence": 100000}
    assert report["arms"]["guided"]["named"] == 0
    for bad in ("min_evidence", "no_such_key=1", "min_evidence=-1", "mode=model",
                "holdout=0.1"):
        with pytest.raises(SystemExit):
            parse_args(["--world", "w.yaml", "--out", "o.json", "--set", bad])


def test_both_runs_the_learner_after_each_day(tmp_path: Path) -> None:
    # 8 tasks a phase: under learner.min_examples, so each nightly job ends quickly.
    report = run_bench(tmp_path, "--guidance", "both", "--scale", "0.2")
    assert_complete(report)
    runs = report["retrain"]
    assert [(r["phase"], r["day"]) for r in runs] == [("first", 0), ("second", 1)]
    for run in runs:
        assert run["status"] == "ok", run
        assert run["exit_code"] == 0 and run["seconds"] > 0 and run["last_line"]
    assert len(report["metrics"]["overall"]["retrain_seconds"]) == 2
    assert report["arms"]["guided"]["proxy_stats"]["guidance"]["mode"] == "both"


def test_scale_keeps_days_and_at_least_one_task_a_day() -> None:
    world = scale_world(parse_world(TINY_WORLD), 0.01)
    assert [(p.days, p.requests) for p in world.phases] == [(1, 1), (1, 1)]
    assert len(world.stream()) == 2


def test_proxy_config_carries_no_world_knowledge(tmp_path: Path) -> None:
    config = json.dumps(proxy_config(tmp_path, 8000, "http://127.0.0.1:9/v1",
                                     arm_guidance("retrieval")))
    for word in ("careful", "hasty", "audit", "rota", "finance", "tiny"):
        assert word not in config
    assert '"holdout": 0.0' in config and '"schedule": null' in config


def test_a_failing_learner_is_reported(tmp_path: Path) -> None:
    status, code, seconds = run_learner(tmp_path / "missing.yaml", tmp_path / "l.log", 120)
    assert status == "failed" and code not in (0, None) and seconds > 0
    assert last_line((tmp_path / "l.log").read_text())


def test_last_line_skips_progress_redraws() -> None:
    assert last_line("a\n 10%|#\r100%|##\r\n\n") == "100%|##"


@pytest.mark.slow
def test_learner_time_records_then_times_two_nightly_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import learner_time

    world = tiny_world(tmp_path)
    out = tmp_path / "time.json"
    argv = ["--world", str(world), "--trajectories", "80", "--then", "40", "--out", str(out)]
    assert learner_time.main(argv) in (0, 1)  # a refused second adapter is still a result
    result = json.loads(out.read_text())
    assert result["trajectories"] == 80 and result["recording_errors"] == 0
    assert result["learner"]["status"] == "ok" and result["decision"] == "promoted"
    assert list(result["phases_seconds"]) == ["dataset", "baseline", "train", "export",
                                              "verify", "gate", "publish"]
    assert 0 < result["learner"]["wall_seconds"] <= 600  # learner.max_run_seconds
    assert result["train"]["steps"] >= 1 and result["counts"]["episodes"] == 80
    assert result["train"]["init"] is None
    night = result["next_night"]  # the next day's run continues the first adapter
    assert night["trajectories"] == 120 and night["counts"]["episodes"] == 120
    assert night["train"]["init"] == "v000001" and night["learner"]["status"] == "ok"
    assert night["decision"] in ("promoted", "refused")
    assert "reproduce: python -m bench.learner_time" in capsys.readouterr().out


def test_learner_time_record_only_keeps_a_store_for_the_job_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from bench import learner_time
    from learner import publish
    from proxy.config import load_config
    from proxy.store import open_for_reading

    world = tiny_world(tmp_path)
    out = tmp_path / "rec.json"
    argv = ["--world", str(world), "--trajectories", "30", "--record-only", "--out", str(out)]
    code = learner_time.main(argv)
    result = json.loads(out.read_text())
    config_path = Path(result["config"])
    try:
        assert code == 0
        assert result["trajectories"] == 30 and result["recording_errors"] == 0
        assert f"python -m learner train --config {config_path}" in capsys.readouterr().out
        config = load_config(config_path)
        assert publish.recent_runs(config.state_dir) == []  # no job ran
        store = open_for_reading(config.store_path)
        try:
            calls = store.query("SELECT count(DISTINCT episode_id) AS n FROM calls")
        finally:
            store.close()
        assert calls[0]["n"] == 30
    finally:
        shutil.rmtree(config_path.parents[1], ignore_errors=True)


def test_replay_over_seeds_and_overrides(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    world = tiny_world(tmp_path)
    out = tmp_path / "replay.json"
    assert replay_main(["--world", str(world), "--seeds", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))["tiny"]
    assert list(data["seeds"]) == ["5", "1", "2"]  # the world's own seed first
    assert data["mean"]["coverage"] > 0.5
    # With no evidence ever enough to act on, the engine never hints.
    assert replay_main(["--world", str(world), "--seeds", "1", "--out", str(out),
                        "--set", "min_evidence=100000"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["tiny"]["mean"]["coverage"] == 0
    assert "reproduce: python -m bench.replay" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        replay_main(["--world", str(world), "--set", "no_such_key=1"])


def test_replay_with_memory_by_meaning(tmp_path: Path) -> None:
    """--meaning adds what mode both consults after words, with the real embeddings:
    where no past task is alike in words, tasks alike in meaning still give hints."""
    world = tiny_world(tmp_path)
    out = tmp_path / "replay.json"
    words_never = ["--world", str(world), "--seeds", "1", "--out", str(out),
                   "--set", "min_similarity=1"]

    def coverage() -> float:
        return float(json.loads(out.read_text(encoding="utf-8"))["tiny"]["mean"]["coverage"])

    assert replay_main(words_never) == 0
    assert coverage() == 0
    assert replay_main([*words_never, "--meaning"]) == 0
    assert coverage() > 0.5
    # Kept in a file, the embeddings give the same numbers, run after run.
    kept = tmp_path / "emb.npz"
    with_file = [*words_never, "--meaning", "--embeddings", str(kept)]
    expected = coverage()
    for _ in range(2):
        assert replay_main(with_file) == 0
        assert coverage() == expected
    assert kept.exists()
    with pytest.raises(SystemExit):
        replay_main([*words_never, "--embeddings", str(kept)])  # needs --meaning


def test_the_next_day_waits_for_the_published_adapter(tmp_path: Path) -> None:
    """The learner only publishes; the proxy loads in the background. The harness
    starts the next day once the proxy serves the new version, not before."""
    from bench.harness.processes import ProxyProcess
    from proxy.config import load_config
    from tests.adapters import catalog, publish, random_adapter

    with ProxyProcess(tmp_path / "arm", "http://127.0.0.1:9/v1",
                      arm_guidance("both")) as proxy:
        state = load_config(proxy.config).state_dir
        assert proxy.wait_adapter() is None  # nothing published: no wait
        publish(state, "v000001", random_adapter(tmp_path / "a.gguf", seed=1),
                catalog({"alpha": "Alpha"}))
        assert proxy.wait_adapter() == "v000001"
        publish(state, "v000002", random_adapter(tmp_path / "b.gguf", seed=2),
                catalog({"alpha": "Alpha"}))
        assert proxy.wait_adapter() == "v000002"
