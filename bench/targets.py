"""What the overhead and fault benchmarks put load on, and the requests they send.

Tactician runs as ``python -m proxy --config <yaml>`` (a real subprocess, as deployed);
the LiteLLM proxy runs from its own virtualenv, configured as its docs say (a
``model_list`` entry ``openai/<model>`` with ``api_base`` pointing at the mock, and a
master key, without which it refuses to start).
"""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.harness.processes import REPO_ROOT, ProxyProcess, Service
from bench.loadgen import BENCH_KEY
from bench.mock_upstream import APPROACHES
from proxy.local_model import free_port
from proxy.store import open_for_reading

SYSTEM_PROMPT = (
    "You are a coding agent working in a large repository. Think before acting, keep "
    "changes small, explain what you did in one short paragraph, and never invent APIs "
    "that you have not seen in the code or the documentation you were given."
)
_VERBS = ("fix", "document", "refactor", "review", "benchmark", "migrate", "test", "trace")
_OBJECTS = ("billing export", "login form", "search index", "audit log", "invoice parser",
            "rate limiter", "cache layer", "upload queue")
REPEATED_TASKS: tuple[str, ...] = tuple(
    f"Please {verb} the {obj} module and report what changed in the {obj} code"
    for verb in _VERBS for obj in _OBJECTS
)
LITELLM_VENV = REPO_ROOT / ".bench-venv-litellm"


def novel_task(rng: random.Random) -> str:
    """Words nobody sent before: no similar past task, so the hint engine must miss."""
    made_up = " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(8))
    return f"Please handle this new request about {made_up}"


def chat_body(task: str, model: str = "mock", stream: bool = False) -> bytes:
    body: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": [
        {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# -- Tactician ---------------------------------------------------------------------

def tactician_service(directory: Path, upstream: str, guidance: dict[str, Any], *,
                      store: dict[str, Any] | None = None,
                      upstream_extra: dict[str, Any] | None = None) -> ProxyProcess:
    """Tactician in front of ``upstream`` (the mock's root URL), without tokens: the load
    generator posts outcomes and snapshots unauthenticated."""
    directory.mkdir(parents=True, exist_ok=True)
    return ProxyProcess(directory, upstream + "/v1", guidance, tokens=False, store=store,
                        upstream_extra=upstream_extra)


def publish_random_adapter(state_dir: Path) -> None:
    """A random LoRA with a catalog of the mock's approaches, published as the learner
    does, so guidance mode "both" really runs the small model on novel tasks."""
    from learner.export_gguf import BaseShape, export_lora_gguf
    from learner.publish import publish_version
    from proxy.hints.strategies import StrategyCatalog
    from proxy.models import default_gguf

    rng = np.random.default_rng(0)
    hidden, ffn, layers, rank = 576, 1536, 30, 4  # SmolLM2-135M
    tensors: dict[str, Any] = {}
    for layer in range(layers):
        prefix = f"base_model.model.model.layers.{layer}.mlp"
        for proj, (rows, cols) in (("up_proj", (ffn, hidden)), ("down_proj", (hidden, ffn))):
            tensors[f"{prefix}.{proj}.lora_A.weight"] = rng.normal(0, 0.08, (rank, cols))
            tensors[f"{prefix}.{proj}.lora_B.weight"] = rng.normal(0, 0.08, (rows, rank))
    arrays = {k: v.astype(np.float32) for k, v in tensors.items()}
    catalog = StrategyCatalog()
    for sentence in APPROACHES:
        catalog.assign(sentence)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = export_lora_gguf(arrays, BaseShape.from_gguf(default_gguf()), float(rank),
                                Path(tmp) / "adapter.gguf")
        publish_version(state_dir, gguf, catalog.to_json(),
                        {"source": "bench: random LoRA, not trained"}, keep=1)


def code_version() -> dict[str, Any]:
    """The commit measured and the proxy files that differed from it (numbers from a
    dirty tree describe that tree, not the commit)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": git("status", "--porcelain", "--", "proxy").splitlines()}


def read_store(path: Path, sql: str) -> list[dict[str, Any]]:
    """Query a store no process holds (after the proxy stopped)."""
    store = open_for_reading(path)
    try:
        return store.query(sql)
    finally:
        store.close()


# -- LiteLLM -----------------------------------------------------------------------

def ensure_litellm_venv(venv: Path = LITELLM_VENV) -> Path:
    """Create the LiteLLM proxy's own virtualenv on first use (a few minutes)."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"creating {venv} with litellm[proxy] (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / ".gitignore").write_text("*\n")  # never committed
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "litellm[proxy]"], check=True)
    return exe


def litellm_version(exe: Path) -> str:
    python = exe.parent / "python"
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m;"
                           "print(m.version('litellm'))"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def litellm_service(directory: Path, upstream: str, exe: Path) -> Service:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "model_list": [{"model_name": "mock", "litellm_params": {
            "model": "openai/mock", "api_base": upstream + "/v1", "api_key": "sk-mock"}}],
        "general_settings": {"master_key": BENCH_KEY},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    command = [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    # Offline: without this LiteLLM spends its start-up retrying a price-list download.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return Service("litellm proxy", command, port, directory / "litellm.log", env)
