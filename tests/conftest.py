"""Shared fixtures: a fake upstream and the real proxy, both on loopback sockets."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import Config, load_config
from proxy.services import Services
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Derived model files (the embedder's float16 copy) go to this session's own cache,
    not the user's: the first proxy to embed converts, as on a fresh machine."""
    root = tmp_path_factory.mktemp("xdg-cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root)
    yield root / "tactician" / "models"
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    with ServerThread(upstream.app) as srv:
        upstream.url = srv.url  # type: ignore[attr-defined]
        yield upstream


class ProxyHandle:
    def __init__(self, config: Config, server: ServerThread) -> None:
        self.config = config
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    @property
    def services(self) -> Services:
        svc: Services = self.server.server.config.loaded_app.app.state.services  # type: ignore[union-attr]
        return svc

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.services.store.query(sql, params)

    def wait_rows(self, sql: str, n: int, params: list[Any] | None = None,
                  timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the recorder has flushed enough rows for ``sql``."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(sql, params)
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def proxy_config(tmp_path: Path, upstream_url: str, **overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstream": {"base_url": upstream_url + "/v1"},
        "store": {"path": str(tmp_path / "tactician.duckdb"), "flush_interval_ms": 20},
        "guidance": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return load_config(raw)


@pytest.fixture
def make_proxy(tmp_path: Path, fake: FakeUpstream) -> Iterator[Callable[..., ProxyHandle]]:
    started: list[ServerThread] = []

    def start(config: Config | None = None, **overrides: Any) -> ProxyHandle:
        cfg = config or proxy_config(tmp_path, fake.url, **overrides)  # type: ignore[attr-defined]
        server = ServerThread(create_app(cfg))
        server.__enter__()
        started.append(server)
        return ProxyHandle(cfg, server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyHandle]) -> ProxyHandle:
    return make_proxy()
