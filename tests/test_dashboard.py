"""The dashboard and /metrics against a store filled by a real guided proxy run, checked
in real headless Chromium; and the summary query on a million calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from proxy.app import create_app
from proxy.dashboard import queries
from proxy.dashboard.routes import check_access, session_value
from proxy.errors import Forbidden, Unauthorized
from proxy.hints.stats import arm_stats, uplift
from proxy.store import Store
from tests import browser, synthetic_store
from tests.conftest import ProxyHandle, proxy_config
from tests.servers import ServerThread
from tests.test_hints import StrategyUpstream

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "dash-admin-token"
BEARER = {"authorization": f"Bearer {TOKEN}"}
TASK = "Plan the quarterly offsite for the platform group"
EPISODES = 36


@dataclass
class Run:
    """A proxy that served a guided workload, and what the test sent it."""

    proxy: ProxyHandle
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    outcomes: int = 0
    chat_calls: int = 0

    def count(self, endpoint: str, status: int) -> None:
        key = (endpoint, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def sql(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.proxy.rows(sql, params)

    def api(self, path: str) -> Any:
        r = httpx.get(f"{self.proxy.url}/dashboard/api/{path}", headers=BEARER, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


def _chat(run: Run, episode: str, i: int, turn: int) -> tuple[str, str]:
    """One chat call; its request id and answer."""
    messages = [{"role": "user", "content": f"{TASK} number {i}"}]
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if turn:
        body["messages"] += [{"role": "assistant", "content": "ok"},
                             {"role": "user", "content": "and the budget?"}]
    r = httpx.post(f"{run.proxy.base_url}/chat/completions", json=body, timeout=30,
                   headers={"x-episode-id": episode})
    assert r.status_code == 200
    run.count("/v1/chat/completions", 200)
    run.chat_calls += 1
    return r.headers["x-request-id"], str(r.json()["choices"][0]["message"]["content"])


def _outcome(run: Run, **body: Any) -> None:
    assert httpx.post(f"{run.proxy.base_url}/outcomes", json=body).status_code == 202
    run.outcomes += 1


def _workload(run: Run) -> None:
    """Episodes of one or two calls; outcomes per episode, per call, or as a score."""
    for i in range(EPISODES):
        episode = f"ep-{i:03d}"
        answers = [_chat(run, episode, i, turn) for turn in range(1 + (i % 3 == 0))]
        rid = answers[-1][0]
        worked = "alpha" in answers[0][1]  # an episode's approach is its first answer's
        if i == EPISODES - 1:
            continue  # one episode never gets an outcome
        if i % 4 == 0:
            _outcome(run, episode_id=episode, success=worked)
        elif i % 4 == 1:
            _outcome(run, request_id=rid, success=worked)
        elif i % 4 == 2:
            _outcome(run, episode_id=episode, score=0.9 if worked else 0.1)
        else:
            _outcome(run, episode_id=episode, success=not worked)  # superseded below
            _outcome(run, episode_id=episode, success=worked)
    for path, status in (("/v1/models", 200), ("/v1/embeddings", 200), ("/v1/nope", 404)):
        method = "POST" if path == "/v1/embeddings" else "GET"
        r = httpx.request(method, f"{run.proxy.url}{path}", json={"model": "e", "input": "x"})
        assert r.status_code == status
        run.count(path if path != "/v1/nope" else "other", status)


def _learner_runs(run: Run) -> None:
    def gate(new: float, current: float | None) -> dict[str, Any]:
        return {"new": {"heldout": new, "replay": new, "n_heldout": 40, "n_replay": 20},
                "current": None if current is None else {"heldout": current},
                "retrieval": {"heldout": 0.5}, "tolerance": 0.02}

    rows = [{"run_id": f"2026010{d}T030000Z-0000000{d}", "status": "ok",
             "started_at": datetime(2026, 1, d, 3, tzinfo=UTC),
             "finished_at": datetime(2026, 1, d, 3, 9, tzinfo=UTC),
             "version": version, "decision": decision, "reason": reason,
             "metrics": {"gate": gate(new, cur)}}
            for d, version, decision, reason, new, cur in (
                (1, "v000001", "promoted", "first adapter", 0.55, None),
                (2, None, "refused", "held-out accuracy fell", 0.48, 0.55),
                (3, "v000002", "promoted", "better on held-out and replay", 0.72, 0.55))]
    svc = run.proxy.services
    svc.recorder.submit(lambda store: store.insert("learner_runs", rows)).result(10)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    up = StrategyUpstream()
    with ServerThread(up.app) as upstream:
        cfg = proxy_config(tmp_path_factory.mktemp("dash"), upstream.url,
                           guidance={"enabled": True, "mode": "retrieval", "holdout": 0.3,
                                     "explore": 0.0},
                           admin={"token": TOKEN})
        with ServerThread(create_app(cfg)) as server:
            handle = Run(ProxyHandle(cfg, server))
            _workload(handle)
            _learner_runs(handle)
            calls = sum(handle.requests.values())
            assert len(handle.proxy.wait_rows("SELECT 1 FROM calls", calls)) == calls
            assert len(handle.proxy.wait_rows("SELECT 1 FROM outcomes", handle.outcomes)) \
                == handle.outcomes
            yield handle


# -- expected values, computed here from the store --------------------------------------
def expected_arms(run: Run) -> dict[str, tuple[int, int]]:
    rows = run.sql("""
        WITH ep AS (
            SELECT c.episode_id, arg_min(c.arm, c.started_at) AS arm,
                   bool_or(coalesce(o.success, o.score >= 0.5)) AS ok
            FROM calls c JOIN call_outcomes o USING (request_id)
            WHERE c.arm IS NOT NULL AND o.outcome_id IS NOT NULL GROUP BY 1)
        SELECT arm, count(*) AS n, sum(ok::INT) AS wins FROM ep GROUP BY arm""")
    return {r["arm"]: (int(r["n"]), int(r["wins"])) for r in rows}


def expected_latency(run: Run) -> dict[str, list[float]]:
    return run.sql("""
        SELECT quantile_cont(upstream_ms, [0.5, 0.95, 0.99]) AS upstream,
               quantile_cont(hint_latency_ms, [0.5, 0.95, 0.99]) AS hint,
               quantile_cont(latency_ms - upstream_ms - coalesce(hint_latency_ms, 0),
                             [0.5, 0.95, 0.99]) AS overhead
        FROM calls""")[0]


def expected_strategies(run: Run) -> dict[str, dict[str, int]]:
    rows = run.sql("""
        SELECT c.hint_strategy AS s, count(*) AS calls,
               count(*) FILTER (WHERE coalesce(o.success, o.score >= 0.5)) AS ok,
               count(*) FILTER (WHERE NOT coalesce(o.success, o.score >= 0.5)) AS bad
        FROM calls c LEFT JOIN call_outcomes o USING (request_id)
        WHERE c.hint_strategy IS NOT NULL GROUP BY 1""")
    return {r["s"]: {"calls": r["calls"], "successes": r["ok"], "failures": r["bad"]}
            for r in rows}


# -- /metrics ---------------------------------------------------------------------------
def scrape(run: Run) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{run.proxy.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_was_served(run: Run) -> None:
    m = scrape(run)
    for (endpoint, status), n in run.requests.items():
        assert m[("tactician_requests_total", (("endpoint", endpoint), ("status", status)))] == n
    chat = (("endpoint", "/v1/chat/completions"),)
    assert m[("tactician_request_seconds_count", chat)] == run.chat_calls
    assert m[("tactician_upstream_seconds_count", chat)] == run.chat_calls
    assert m[("tactician_overhead_seconds_count", ())] == sum(run.requests.values())
    asked = run.sql("SELECT count(*) AS n FROM calls WHERE hint_latency_ms IS NOT NULL")
    assert m[("tactician_hint_seconds_count", ())] == asked[0]["n"] > 0
    served = sum(v for (name, _), v in m.items() if name == "tactician_hints_served_total")
    skipped = {dict(labels)["reason"]: v for (name, labels), v in m.items()
               if name == "tactician_hints_skipped_total"}
    assert served + sum(skipped.values()) == run.chat_calls
    by_reason = run.sql("SELECT hint_skip_reason AS r, count(*) AS n FROM calls "
                        "WHERE arm IS NOT NULL AND hint_text IS NULL GROUP BY 1")
    assert skipped == {r["r"]: r["n"] for r in by_reason}
    assert m[("tactician_outcomes_received_total", ())] == run.outcomes
    assert m[("tactician_recorder_written_total", ())] >= sum(run.requests.values())
    assert m[("tactician_recorder_dropped_total", ())] == 0
    assert m[("tactician_recorder_queue_depth", ())] >= 0
    assert m[("tactician_adapter_info", (("version", "none"),))] == 1
    stats = httpx.get(f"{run.proxy.base_url}/tactician/stats").json()
    assert m[("tactician_uplift", ())] == pytest.approx(stats["uplift"]["uplift"])
    assert m[("tactician_uplift_ci_low", ())] == pytest.approx(stats["uplift"]["ci95"][0])
    for arm, report in stats["arms"].items():
        assert m[("tactician_arm_episodes", (("arm", arm),))] == report["episodes"]


def test_metrics_registries_are_per_app(tmp_path: Path) -> None:
    a = create_app(proxy_config(tmp_path / "a", "http://127.0.0.1:9"))
    b = create_app(proxy_config(tmp_path / "b", "http://127.0.0.1:9"))
    with ServerThread(a) as sa, ServerThread(b) as sb:
        httpx.get(f"{sa.url}/v1/models")
        assert "tactician_requests_total{" in httpx.get(f"{sa.url}/metrics").text
        assert "tactician_requests_total{" not in httpx.get(f"{sb.url}/metrics").text


# -- access -----------------------------------------------------------------------------
def test_dashboard_and_api_refuse_without_token(run: Run) -> None:
    url = run.proxy.url
    for path in ("/dashboard", "/dashboard/api/summary", "/dashboard/api/calls",
                 "/dashboard/api/live", "/dashboard/api/calls/x", "/dashboard/api/episodes/x",
                 "/dashboard/api/strategies", "/dashboard/api/learning"):
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers={"authorization": "Bearer nope"}).status_code \
            == 401, path
        assert httpx.get(url + path, cookies={"tactician_dashboard": "forged"}).status_code \
            == 401, path
    assert httpx.get(f"{url}/dashboard?token=nope").status_code == 401
    page = httpx.get(f"{url}/dashboard", headers=BEARER)
    assert page.status_code == 200 and 'src="http' not in page.text  # nothing external
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_token_link_sets_a_session_cookie(run: Run) -> None:
    r = httpx.get(f"{run.proxy.url}/dashboard?token={TOKEN}")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    with httpx.Client(base_url=run.proxy.url, cookies=r.cookies) as client:
        assert client.get("/dashboard").status_code == 200
        assert client.get("/dashboard/api/live").json()["adapter_version"] is None


def _request(client: str, host: str | None = None) -> Request:
    headers = [(b"host", host.encode())] if host else []
    return Request({"type": "http", "method": "GET", "path": "/dashboard",
                    "headers": headers, "client": (client, 50000), "query_string": b""})


def test_without_token_only_loopback_clients(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1"):
        check_access(None, _request(host))
    for host in ("10.1.2.3", "172.17.0.1", "testclient"):
        with pytest.raises(Forbidden):
            check_access(None, _request(host))
    for name in ("localhost:8787", "127.0.0.1:8787", "[::1]:8787", "app.localhost", "LOCALHOST"):
        check_access(None, _request("127.0.0.1", name))
    # DNS rebinding: a site's name resolved to 127.0.0.1 reaches us from loopback.
    for name in ("evil.example:8787", "evil.example", "127.0.0.1.evil.example"):
        with pytest.raises(Forbidden):
            check_access(None, _request("127.0.0.1", name))
    with pytest.raises(Unauthorized):
        check_access("t", _request("127.0.0.1"))  # a token applies on loopback too
    assert session_value("a") != session_value("b")
    with ServerThread(create_app(proxy_config(tmp_path, "http://127.0.0.1:9"))) as srv:
        assert httpx.get(f"{srv.url}/dashboard/api/summary").status_code == 200


# -- the API's numbers ------------------------------------------------------------------
def test_api_numbers_equal_the_store(run: Run) -> None:
    s = run.api("summary")
    arms = expected_arms(run)
    assert set(arms) == {"guided", "control"}, "the workload must fill both arms"
    for arm, (n, wins) in arms.items():
        assert (s["arms"][arm]["episodes"], s["arms"][arm]["successes"]) == (n, wins)
    assert s["uplift"] == uplift(arms["guided"], arms["control"])
    stats = arm_stats(run.proxy.services.store)
    assert s["arms"] == stats["arms"] and s["uplift"] == stats["uplift"]
    points = s["timeline"]["points"]
    assert sum(p["guided"]["episodes"] for p in points) == arms["guided"][0]
    assert points[-1]["cumulative"] == s["uplift"]
    for key, values in expected_latency(run).items():
        got = s["latency_ms"][key]
        assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(values)
    assert s["totals"] == {"calls": sum(run.requests.values()), "outcomes": run.outcomes}
    strategies = {r["strategy"]: r for r in run.api("strategies")["strategies"]}
    for name, want in expected_strategies(run).items():
        got = strategies[name]
        assert {k: got[k] for k in want} == want
        assert got["examples"] and all(TASK in t for t in got["examples"])


def test_drill_down_to_a_call_and_an_episode(run: Run) -> None:
    calls = run.api("calls?limit=5")["calls"]
    newest = run.sql("SELECT request_id FROM calls ORDER BY started_at DESC LIMIT 5")
    assert [c["request_id"] for c in calls] == [r["request_id"] for r in newest]
    hinted = run.sql("SELECT request_id, hint_text FROM calls WHERE hint_text IS NOT NULL "
                     "AND episode_id IN (SELECT episode_id FROM outcomes "
                     "WHERE request_id IS NULL) ORDER BY started_at")
    detail = run.api(f"calls/{hinted[0]['request_id']}")
    assert detail["call"]["hint_text"] == hinted[0]["hint_text"]
    assert detail["call"]["outcome_level"] == "episode" and detail["outcomes"]
    episode = run.api("episodes/ep-007")
    assert len(episode["calls"]) == 1 and len(episode["outcomes"]) == 2
    assert episode["calls"][0]["success"] == episode["outcomes"][-1]["success"]
    missing = httpx.get(f"{run.proxy.url}/dashboard/api/calls/none", headers=BEARER)
    assert missing.status_code == 404
    bad = httpx.get(f"{run.proxy.url}/dashboard/api/calls?limit=0", headers=BEARER)
    assert bad.status_code == 400


# -- the page in a real browser ---------------------------------------------------------
def _value(dom: browser.Dom, element_id: str) -> float:
    return float(dom[element_id].attrs["data-value"])


def test_dashboard_renders_in_chromium(run: Run) -> None:
    url = f"{run.proxy.url}/dashboard?token={TOKEN}"
    dom = browser.dump_dom(url)
    body = dom.find("body")[0]
    assert body.attrs.get("data-ready") == "yes", dom["error"].text
    s = run.api("summary")
    arms = expected_arms(run)
    for arm, (n, wins) in arms.items():
        assert _value(dom, f"n-{arm}") == n and _value(dom, f"wins-{arm}") == wins
        assert _value(dom, f"rate-{arm}") == pytest.approx(wins / n)
        assert dom[f"rate-{arm}"].text == f"{100 * wins / n:.1f}%"
    lift = uplift(arms["guided"], arms["control"])
    assert _value(dom, "uplift") == pytest.approx(lift["uplift"])
    assert _value(dom, "uplift-lo") == pytest.approx(lift["ci95"][0])
    assert _value(dom, "calls-total") == sum(run.requests.values())
    # Charts: one point per time bucket and arm with data, bars per hint decision.
    chart = dom.find("svg", data_chart="arms")[0]
    for arm in arms:
        points = chart.find("circle", data_series=arm)
        want = [p for p in s["timeline"]["points"] if p[arm]["episodes"]]
        assert [float(c.attrs["data-y"]) for c in points] == pytest.approx(
            [p[arm]["success_rate"] for p in want])
    assert dom.find("svg", data_chart="uplift")[0].find("polygon")  # the CI band
    hints = {r.attrs["data-label"]: float(r.attrs["data-value"])
             for r in dom.find("svg", data_chart="hints")[0].find("rect")}
    assert sum(hints.values()) == run.chat_calls
    learning = dom.find("svg", data_chart="learning")[0]
    assert [float(c.attrs["data-y"]) for c in learning.find("circle", data_series="new adapter")] \
        == [0.55, 0.48, 0.72]
    assert [r.attrs["data-decision"] for r in dom["runs"].find("tr") if "data-run" in r.attrs] \
        == ["promoted", "refused", "promoted"]
    for name, counts in expected_strategies(run).items():
        row = dom["strategies"].find("tr", data_strategy=name)[0]
        assert int(row.attrs["data-successes"]) == counts["successes"]
        assert int(row.attrs["data-failures"]) == counts["failures"]
    rows = dom["calls"].find("tr", **{"class": "click"})
    assert len(rows) == min(50, sum(run.requests.values()))
    latency = {r["request_id"]: r["latency_ms"] for r in run.sql("SELECT * FROM calls")}
    for row in rows:
        assert float(row.attrs["data-latency"]) == pytest.approx(
            latency[row.attrs["data-request"]])
    shot = browser.screenshot(url, ROOT / "test-artifacts" / "dashboard.png")
    assert shot.stat().st_size > 50_000


def test_drill_down_renders_in_chromium(run: Run) -> None:
    call = run.sql("SELECT request_id, hint_text FROM calls WHERE hint_text IS NOT NULL "
                   "ORDER BY started_at DESC LIMIT 1")[0]
    dom = browser.dump_dom(f"{run.proxy.url}/dashboard?token={TOKEN}#call={call['request_id']}")
    assert dom.find("body")[0].attrs.get("data-ready") == "yes", dom["error"].text
    assert "hidden" not in dom["detail"].attrs
    assert call["request_id"] in dom["detail-title"].text
    assert dom["detail"].find("pre", data_field="hint_text")[0].text == call["hint_text"]


# -- scale ------------------------------------------------------------------------------
@pytest.mark.slow
def test_summary_under_a_second_on_a_million_calls(tmp_path: Path) -> None:
    store = Store(tmp_path / "big.duckdb")
    synthetic_store.build(store, 1_000_000)
    assert store.scalar("SELECT count(*) FROM calls") == 1_000_000
    queries.summary(store, queries.EPOCH)  # first touch loads the columns into memory
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        report = queries.summary(store, queries.EPOCH)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, f"summary took {timings}"
    stats = arm_stats(store)
    assert report["arms"] == stats["arms"] and report["uplift"] == stats["uplift"]
    assert len(report["timeline"]["points"]) <= queries.MAX_BUCKETS
    store.close()
