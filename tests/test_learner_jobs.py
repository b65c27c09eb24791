"""The proxy's side of learning: the scheduled learner run and its run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learner.cli import main as learner_main
from proxy.config import load_config
from proxy.learning import LearnerJobs
from proxy.recorder import Recorder
from proxy.store import Store


def make(tmp_path: Path, schedule: str = "0 3 * * *") -> tuple[LearnerJobs, Store, Recorder]:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f'store: {{path: "{tmp_path / "s.duckdb"}"}}\n'
                        f'learner: {{schedule: "{schedule}", threads: 1}}\n'
                        "guidance: {enabled: false}\n")
    cfg = load_config(cfg_file)
    store = Store(cfg.store_path)
    recorder = start_recorder(store, cfg.state_dir / "spill.jsonl")
    return LearnerJobs(cfg, recorder), store, recorder


def start_recorder(store: Store, spill_path: Path) -> Recorder:
    recorder = Recorder(store, queue_size=100, batch_size=10, flush_interval_s=0.01,
                        spill_path=spill_path)
    recorder.start()
    return recorder


def test_next_run_follows_the_cron_schedule(tmp_path: Path) -> None:
    jobs, store, recorder = make(tmp_path)
    nxt = jobs._next_fire()
    assert nxt is not None and nxt.astimezone().hour == 3 and nxt.astimezone().minute == 0
    recorder.stop()
    store.close()


def test_run_once_runs_the_real_learner_and_its_record_is_ingested(tmp_path: Path) -> None:
    jobs, store, recorder = make(tmp_path)
    store.close()  # the learner opens the store itself when no proxy holds it
    recorder.stop()
    assert jobs.run_once() == 0  # an empty store: "not enough data", a clean exit
    log = next((tmp_path / "s.state" / "logs").glob("learner-*.log")).read_text()
    assert "not enough data" in log
    store = Store(tmp_path / "s.duckdb")
    recorder = start_recorder(store, tmp_path / "spill.jsonl")
    jobs.recorder = recorder
    jobs.ingest()  # records the learner could not write itself are carried in, once
    jobs.ingest()
    runs = store.query("SELECT status, reason FROM learner_runs")
    assert len(runs) == 1 and runs[0]["status"] == "skipped"
    recorder.stop()


def test_ingest_moves_run_files_into_the_store(tmp_path: Path) -> None:
    jobs, store, recorder = make(tmp_path)
    runs = tmp_path / "s.state" / "runs"
    runs.mkdir(parents=True)
    row = {"run_id": "run-1", "started_at": "2026-01-01T03:00:00+00:00",
           "finished_at": "2026-01-01T03:05:00+00:00", "status": "ok", "version": "v000001",
           "decision": "promoted", "reason": "first adapter", "metrics": {"acc": 0.9}}
    (runs / "run-1.json").write_text(json.dumps(row))
    assert jobs.ingest() == 1 and jobs.ingest() == 0
    got = store.query("SELECT run_id, decision, metrics FROM learner_runs")
    assert got == [{"run_id": "run-1", "decision": "promoted", "metrics": '{"acc": 0.9}'}]
    recorder.stop()


def test_a_bad_run_record_is_set_aside_and_the_rest_ingested(tmp_path: Path) -> None:
    jobs, store, recorder = make(tmp_path)
    runs = tmp_path / "s.state" / "runs"
    runs.mkdir(parents=True)
    (runs / "run-0.json").write_text("{not json")
    (runs / "run-1.json").write_text(json.dumps({"run_id": "run-1", "status": "ok"}))
    assert jobs.ingest() == 1 and jobs.ingest() == 0
    assert (runs / "rejected" / "run-0.json").is_file()
    assert store.query("SELECT run_id FROM learner_runs") == [{"run_id": "run-1"}]
    recorder.stop()


def test_status_names_a_broken_pointer_instead_of_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f'store: {{path: "{tmp_path / "s.duckdb"}"}}\n')
    adapters = tmp_path / "s.state" / "adapters"
    adapters.mkdir(parents=True)
    for pointer, needle in (("{broken", "unreadable"),
                            ('{"version": "v000007", "adapter": "v000007/adapter.gguf", '
                             '"catalog": "v000007/catalog.json"}', "v000007 (its manifest")):
        (adapters / "current.json").write_text(pointer)
        assert learner_main(["status", "--config", str(cfg_file)]) == 1
        assert needle in capsys.readouterr().out
    assert learner_main(["rollback", "--config", str(cfg_file)]) == 1
