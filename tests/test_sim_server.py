"""The simulated model over real loopback HTTP, driven by the official openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.sim import load_world
from bench.sim.model import decide
from bench.sim.server import SimServer
from bench.sim.world import Task, earliest_named

WORLD = Path(__file__).resolve().parents[1] / "bench" / "worlds" / "release-desk.yaml"


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(load_world(WORLD)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def first_task(server: SimServer, turns: int) -> Task:
    return next(t for t in server.tasks if t.turns == turns)


def messages_for(server: SimServer, task: Task, hint: str = "") -> list[ChatCompletionMessageParam]:
    system = f"{server.world.agent_system_prompt}\n{hint}".strip()
    return [{"role": "system", "content": system}, {"role": "user", "content": task.text}]


def test_non_streamed_completion(server: SimServer, client: openai.OpenAI) -> None:
    task = server.register(first_task(server, 1).index)
    messages = messages_for(server, task, "Hint: git bisect first.")
    response = client.chat.completions.create(model="big", messages=messages)
    text = response.choices[0].message.content or ""
    record = server.model.record(task.index)
    assert record is not None and record.named == "bisect"
    assert earliest_named(server.world.strategies, text) == record.strategy
    assert response.model == "big" and response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    prompt_words = sum(len(str(m["content"]).split()) for m in messages)
    assert response.usage.prompt_tokens == prompt_words
    assert response.usage.completion_tokens == len(text.split())
    assert response.usage.total_tokens == prompt_words + len(text.split())
    assert server.outcome(task.index) == record.success


def test_streamed_completion_with_usage(server: SimServer, client: openai.OpenAI) -> None:
    task = server.register(first_task(server, 1).index)
    plain = client.chat.completions.create(model="big", messages=messages_for(server, task))
    stream = client.chat.completions.create(
        model="big",
        messages=messages_for(server, task),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # a retry: same index, same draws
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    quiet = client.chat.completions.create(
        model="big", messages=messages_for(server, task), stream=True
    )
    assert all(c.usage is None for c in quiet)


def test_unknown_task_is_a_400_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="big", messages=[{"role": "user", "content": "Tell a joke."}]
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "unknown_task"
    assert isinstance(caught.value.body, dict)
    assert set(caught.value.body) == {"message", "type", "param", "code"}


def test_multi_turn_episode_keeps_its_strategy(server: SimServer, client: openai.OpenAI) -> None:
    task = server.register(first_task(server, 2).index)
    messages = messages_for(server, task, "Use log tracing.")
    replies = []
    for _ in range(task.turns):
        answer = (
            client.chat.completions.create(model="big", messages=messages)
            .choices[0]
            .message.content
        )
        replies.append(answer or "")
        messages = [
            {"role": "system", "content": "Use a clean-slate rewrite."},
            *messages[1:],
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Continue."},
        ]
    expected = decide(server.world, task, "Use log tracing.").strategy
    assert [earliest_named(server.world.strategies, r) for r in replies] == [expected] * task.turns
    record = server.model.record(task.index)
    assert record is not None and record.turns_seen == task.turns and record.named == "logs"


def test_models_listed_and_log_not_served(server: SimServer, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["sim-release-desk"]
    assert httpx.get(f"{server.base_url}/records").status_code == 404
    bad = httpx.post(f"{server.base_url}/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
