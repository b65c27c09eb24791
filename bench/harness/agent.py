"""The agent: drives one arm's task stream through the proxy, day by day.

It sends what a real agent would: its own system prompt, the task, and for a multi-turn
episode the previous answer and "Continue." under an ``x-episode-id`` it chose. It then
posts the outcome with the identifier the proxy returned. Only the simulated model's
in-process log (never the proxy) tells the metrics what happened.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from bench.harness.processes import (
    LearnerRun,
    ProxyProcess,
    arm_guidance,
    last_line,
    run_learner,
    tail,
)
from bench.sim.metrics import ArmLog, NightlyJob
from bench.sim.server import SimServer
from bench.sim.world import Task

MODEL = "big-model"  # the simulated model answers to any name
CALL_TIMEOUT_S = 120.0
CONTINUE = "Continue."

Progress = Callable[[str], None]  # told about each finished task or phase of an arm


@dataclass(frozen=True)
class ArmSpec:
    name: str  # control | guided
    mode: str | None  # the proxy's guidance.mode; None: guidance off
    learner: bool  # run the nightly job after each day
    learner_timeout_s: float
    budget_ms: float | None = None  # the guided arm's guidance.budget_ms; None: default
    settings: Mapping[str, Any] = field(default_factory=dict)  # more guidance keys


@dataclass
class ArmResult:
    name: str
    mode: str | None
    call_ms: dict[tuple[int, int], float] = field(default_factory=dict)
    learner_runs: list[LearnerRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    proxy_stats: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    log: ArmLog = field(default_factory=lambda: ArmLog(records=()))


class Agent:
    def __init__(self, server: SimServer, proxy: ProxyProcess, result: ArmResult) -> None:
        self.server = server
        self.proxy = proxy
        self.result = result
        self.system = server.world.agent_system_prompt
        self.client = openai.OpenAI(
            base_url=proxy.base_url, api_key="sk-bench", timeout=CALL_TIMEOUT_S, max_retries=0
        )

    def run(self, task: Task) -> None:
        self.server.register(task.index)
        episode = f"ep-{task.index}" if task.turns > 1 else None
        messages: list[ChatCompletionMessageParam] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": task.text})
        request_id = ""
        try:
            for turn in range(task.turns):
                answer, request_id = self._call(task.index, turn, messages, episode)
                messages += [
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": CONTINUE},
                ]
            key, identifier = ("episode_id", episode) if episode else ("request_id", request_id)
            self.proxy.post_outcome(key, identifier, self.server.outcome(task.index))
        except (openai.OpenAIError, httpx.HTTPError, OSError, ValueError) as exc:
            # An agent whose call failed moves on; the metrics count the task as failed.
            self.result.errors.append(f"task {task.index}: {type(exc).__name__}: {exc}")

    def _call(
        self, index: int, turn: int, messages: list[ChatCompletionMessageParam], episode: str | None
    ) -> tuple[str, str]:
        headers = {"x-episode-id": episode} if episode else None
        start = time.perf_counter()
        raw = self.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, extra_headers=headers
        )
        completion = raw.parse()
        self.result.call_ms[(index, turn)] = (time.perf_counter() - start) * 1000
        return completion.choices[0].message.content or "", raw.headers.get("x-request-id", "")


def nightly(spec: ArmSpec, proxy: ProxyProcess, task: Task) -> LearnerRun:
    """The learner's job after the last task of ``task``'s day, or a skipped entry."""
    if not spec.learner:
        return LearnerRun(task.phase, task.day, task.day_in_phase, "skipped", None, 0.0, "")
    proxy.drain()
    log_path = proxy.directory / f"learner-day-{task.day}.log"
    status, code, seconds = run_learner(proxy.config_path, log_path, spec.learner_timeout_s)
    line = last_line(tail(log_path))
    # "Before the next day starts": the day's adapter is served, not still loading.
    serving = proxy.wait_adapter()
    return LearnerRun(task.phase, task.day, task.day_in_phase, status, code, seconds, line,
                      serving)


def run_arm(
    spec: ArmSpec, server: SimServer, directory: Path, progress: Progress
) -> ArmResult:
    """One arm on a fresh store; the simulated model's log is reset first."""
    server.reset()
    result = ArmResult(spec.name, spec.mode)
    start = time.perf_counter()
    with ProxyProcess(directory, server.base_url, arm_guidance(spec.mode, spec.budget_ms,
                                                                   spec.settings)) as proxy:
        agent = Agent(server, proxy, result)
        for _, day in itertools.groupby(server.tasks, key=lambda t: t.day):
            tasks: Sequence[Task] = list(day)
            for task in tasks:
                agent.run(task)
                progress("task")
            if spec.learner:
                progress(f"learner after day {tasks[-1].day + 1}")
            result.learner_runs.append(nightly(spec, proxy, tasks[-1]))
        proxy.drain()
        result.proxy_stats = proxy.stats()
    result.wall_seconds = time.perf_counter() - start
    jobs = [
        NightlyJob(run.phase, run.day_in_phase, run.seconds)
        for run in result.learner_runs
        if run.status != "skipped"
    ]
    result.log = ArmLog(records=server.records(), call_ms=dict(result.call_ms), nightly=jobs)
    return result
