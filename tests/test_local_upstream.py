"""A real local OpenAI-compatible upstream: llama.cpp's server serving the SmolLM2 GGUF.

This is also the embedded default: with no upstream configured, `python -m proxy`
starts that server itself and answers offline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import free_port

MSGS = [{"role": "user", "content": "Say hello in three words."}]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def proxy_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, int]]:
    """`python -m proxy --config` with no upstream: the embedded default."""
    tmp = tmp_path_factory.mktemp("local")
    port = free_port()
    cfg = tmp / "config.yaml"
    cfg.write_text(f'listen: "127.0.0.1:{port}"\n'
                   f'store: {{path: "{tmp / "t.duckdb"}"}}\n'
                   "guidance: {enabled: false}\nlearner: {schedule: null}\n")
    env = {k: v for k, v in os.environ.items() if k != "TACTICIAN_UPSTREAM_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"proxy did not start: {err}")
            time.sleep(0.2)
        yield url, tmp / "t.duckdb", proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def default_proxy(proxy_process: tuple[str, Path, int]) -> tuple[str, Path]:
    return proxy_process[0], proxy_process[1]


@pytest.fixture(scope="module")
def proxy_pid(proxy_process: tuple[str, Path, int]) -> int:
    return proxy_process[2]


def test_openai_client_against_embedded_llama_cpp(default_proxy: tuple[str, Path]) -> None:
    url, _ = default_proxy
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    models = [m.id for m in c.models.list()]
    assert models and "SmolLM2" in models[0]
    raw = c.chat.completions.with_raw_response.create(model=models[0], messages=MSGS,
                                                      max_tokens=12, temperature=0)
    resp = raw.parse()
    assert resp.choices[0].message.content and resp.usage and resp.usage.completion_tokens > 0
    assert raw.headers["x-request-id"]
    stream = c.chat.completions.create(model=models[0], messages=MSGS, max_tokens=12,
                                       temperature=0, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text.strip()


def test_stream_through_proxy_matches_direct_shape(default_proxy: tuple[str, Path]) -> None:
    url, _ = default_proxy
    body = {"model": "m", "messages": MSGS, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw())
    assert raw.rstrip().endswith(b"data: [DONE]")


def test_calls_recorded_after_shutdown(default_proxy: tuple[str, Path]) -> None:
    url, _ = default_proxy
    httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": "hello"}, timeout=60)
    # The store is held by the proxy; the snapshot route is how another process reads.
    snap = httpx.post(f"{url}/v1/tactician/snapshot", timeout=60).json()["path"]
    from proxy.store import open_for_reading

    store = open_for_reading(Path(snap))
    rows = store.query("SELECT endpoint, status, provider FROM calls")
    assert {r["endpoint"] for r in rows} >= {"/v1/models", "/v1/chat/completions"}
    assert all(r["provider"] == "openai" for r in rows)


def test_concurrent_streams_are_not_cut_short(default_proxy: tuple[str, Path]) -> None:
    # llama.cpp's server, by default, ends a running stream when another request comes.
    url, _ = default_proxy
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

    def finish(_: int) -> str | None:
        stream = c.chat.completions.create(model="m", messages=MSGS, max_tokens=24,
                                           temperature=0, stream=True)
        reasons = [ch.choices[0].finish_reason for ch in stream if ch.choices]
        return reasons[-1] if reasons else None

    with ThreadPoolExecutor(3) as pool:
        assert all(pool.map(finish, range(3)))


def _children(pid: int) -> list[int]:
    # Per thread: the server may have been started from a worker thread.
    return [int(p) for task in Path(f"/proc/{pid}/task").iterdir()
            for p in (task / "children").read_text().split()]


def test_a_dead_local_model_is_reported_and_restarted(default_proxy: tuple[str, Path],
                                                      proxy_pid: int) -> None:
    url, _ = default_proxy
    before = httpx.get(f"{url}/healthz").json()["local_model"]
    assert before["running"] and before["model"].endswith(".gguf")
    children = _children(proxy_pid)
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    deadline = time.monotonic() + 120
    health = httpx.get(f"{url}/healthz").json()
    while health["local_model"]["restarts"] <= before["restarts"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.3)
        health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["local_model"]["last_exit"] == -signal.SIGKILL
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    assert c.chat.completions.create(model="m", messages=MSGS, max_tokens=4).choices


def test_the_local_model_exits_with_a_killed_proxy(tmp_path: Path) -> None:
    # kill -9 gives the proxy no chance to stop its child: the child must notice.
    code = ("import time\nfrom pathlib import Path\nfrom proxy.config import LocalModelConfig\n"
            "from proxy.local_model import LocalModelServer\n"
            "s = LocalModelServer(LocalModelConfig(), log_path=Path('l.log'))\n"
            "s.start()\nprint(s._proc.pid, flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and b"zombie" not in _state(child):
        assert time.monotonic() < deadline, "the model server outlived its proxy"
        time.sleep(0.2)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except FileNotFoundError:
        return b"zombie"
