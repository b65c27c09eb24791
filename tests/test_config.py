"""Strict, typed config: unknown keys fail, ${ENV} resolves, every key is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.config import documented_keys, load_config
from proxy.errors import ConfigError

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
    documented = set(re.findall(r"`([a-z_\[\].]+)`", doc))
    missing = [k for k in documented_keys() if k not in documented]
    assert not missing, f"undocumented config keys: {missing}"
