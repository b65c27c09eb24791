"""Smoke runs of the overhead and fault benchmarks: small, but end to end through real
processes (mock upstream, ``python -m proxy``), checking that the reports are sane.
LiteLLM is left out here: its proxy needs its own virtualenv (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.harness.processes import REPO_ROOT


def run_module(module: str, *args: str, timeout: float = 80.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_overhead_smoke(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    done = run_module(
        "bench.overhead", "--targets", "direct,off,retrieval", "--rates", "50",
        "--stream-rates", "50", "--rounds", "1", "--seconds", "1", "--warmup", "0.2",
        "--c1-seconds", "0.5", "--ramp", "", "--workdir", str(tmp_path / "work"),
        "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    chat = report["results"]["chat@50"]
    assert set(chat) == {"direct", "off", "retrieval-hit", "retrieval-miss"}
    for arm, summary in chat.items():
        assert summary["n"] == 50 and summary["errors"] == 0, (arm, summary)
        assert 0 < summary["latency_p50"] <= summary["latency_p99"] < 5000, (arm, summary)
        assert summary["server_cpu_ms_per_request"] >= 0
    assert report["added"]["chat@50"]["direct"]["added_p50"] == 0
    stream = report["results"]["stream@50"]
    assert set(stream) == {"direct", "off", "retrieval-hit"}
    assert all(0 < s["ttfb_p50"] <= s["latency_p50"] for s in stream.values())
    assert report["results"]["chat@c1"]["off"]["n"] > 0
    assert report["rss_mb"]["off"]["idle_mb"] > 0
    paths = {(r["model"], r["path"]) for r in report["hint_paths"]["retrieval"]}
    assert ("bench-repeated", "retrieval") in paths  # the hit arm really hit
    assert ("bench-novel", "skip:thin_evidence") in paths  # and the miss arm missed
    assert "reproduce: python -m bench.overhead" in done.stdout


def test_faults_smoke(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    done = run_module("bench.faults", "--requests", "500", "--recorder-seconds", "1",
                      "--workdir", str(tmp_path / "work"), "--out", str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] is True
    names = {c["name"] for c in report["checks"]}
    assert "faults: every answer is the expected one" in names
    assert any(name.startswith("kill:") for name in names)
    assert report["faults"]["recorder"]["spilled"] > 0  # the small queue really spilled
    assert report["recorder"]["burst_rows_per_s"] > 0
    assert "PASS:" in done.stdout
