"""The simulated big model (WORLD_SPEC.md, "The simulated model"), without any HTTP.

Tying a request to its stream index: the harness calls ``SimModel.register(i)`` in
process just before it sends task ``i``, which appends ``i`` to a FIFO keyed by the
task's exact text. A request is matched by its first user message to the oldest
registered index of that text whose episode has not answered this turn yet (the turn
is the number of assistant messages in the request). Nothing about the index travels
over the wire, so the proxy cannot learn it; a retried call finds its own index again
and, since every draw is a hash of (seed, index, purpose), gets the same answer.
Registering a text prunes its finished episodes, so a sequential harness never sees a
stale match. Episodes are keyed by task index; ``x-episode-id`` is not needed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bench.sim.world import Task, World, earliest_named, pick_one, pick_weighted

GUIDANCE_ROLES = ("system", "developer")


class SimRequestError(Exception):
    """A request the simulated model refuses; the server answers HTTP 400."""

    def __init__(self, message: str, code: str, param: str | None = "messages") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True)
class Decision:
    named: str | None  # the strategy named first in the system/developer text
    followed: bool  # the compliance draw said to follow it
    strategy: str  # the strategy actually used
    success: bool  # the success draw for that strategy


@dataclass(frozen=True)
class TaskRecord:
    """What the simulated model saw and did for one task (episode)."""

    index: int
    phase: str
    day: int
    day_in_phase: int
    position: int
    family: str
    domain: str
    turns: int
    system_text: str  # of the turn that decided the strategy (normally the first)
    named: str | None
    followed: bool
    strategy: str
    success: bool
    turns_seen: int

    @property
    def succeeded(self) -> bool:
        """An episode the agent abandoned part-way does not count as solved."""
        return self.success and self.turns_seen >= self.turns


@dataclass(frozen=True)
class ParsedRequest:
    first_user: str
    system_text: str
    turn: int  # how many assistant messages came before: 0 on an episode's first call
    last_answer: str  # the latest assistant message, "" on the first turn
    prompt_words: int


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Episode:
    decision: Decision | None = None
    system_text: str = ""
    answered: set[int] = field(default_factory=set)


def count_words(text: str) -> int:
    """Token counts are whitespace-separated words: honest, and easy to re-count."""
    return len(text.split())


def message_text(content: object) -> str:
    """Text of a message's content: a string or a list of {"type": "text"} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    raise SimRequestError("message content must be a string or a list of parts", "invalid_messages")


def parse_messages(messages: object) -> ParsedRequest:
    if not isinstance(messages, list) or not messages:
        raise SimRequestError("'messages' must be a non-empty list", "invalid_messages")
    texts: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise SimRequestError("each message needs a string 'role'", "invalid_messages")
        texts.append((message["role"], message_text(message.get("content"))))
    users = [text for role, text in texts if role == "user"]
    answers = [text for role, text in texts if role == "assistant"]
    if not users:
        raise SimRequestError("the request has no user message", "missing_user_message")
    return ParsedRequest(
        first_user=users[0].strip(),
        system_text="\n".join(text for role, text in texts if role in GUIDANCE_ROLES),
        turn=len(answers),
        last_answer=answers[-1].strip() if answers else "",
        prompt_words=sum(count_words(text) for _, text in texts),
    )


def decide(world: World, task: Task, system_text: str) -> Decision:
    """Steps 2 and 3 of the spec; every draw is keyed by the task's stream index."""
    tables = world.tables(task.family, task.phase)
    named = earliest_named(world.strategies, system_text)
    followed = named is not None and world.draw(task.index, "comply") < world.compliance
    if named is not None and followed:
        strategy = named
    else:
        strategy = pick_weighted(tables.prior, world.draw(task.index, "prior"))
    success = world.draw(task.index, "success") < tables.p_success(strategy)
    return Decision(named, followed, strategy, success)


def task_record(task: Task, system_text: str, decision: Decision,
                turns_seen: int) -> TaskRecord:
    return TaskRecord(
        index=task.index,
        phase=task.phase,
        day=task.day,
        day_in_phase=task.day_in_phase,
        position=task.position,
        family=task.family,
        domain=task.domain,
        turns=task.turns,
        system_text=system_text,
        named=decision.named,
        followed=decision.followed,
        strategy=decision.strategy,
        success=decision.success,
        turns_seen=turns_seen,
    )


def reply_text(world: World, task: Task, strategy_id: str, turn: int) -> str:
    """A says line, then a short answer that reveals nothing about the outcome."""
    says = pick_one(world.strategy(strategy_id).says, world.draw(task.index, f"says:{turn}"))
    if task.turns == 1:
        return f"{says}\n\nAnswer: the {task.domain} task above is done."
    part = f"part {turn + 1} of {task.turns}"
    return f"{says}\n\nAnswer, {part}: this step of the {task.domain} task is done."


class SimModel:
    """The stateful part: the registry of pending tasks, episodes and the log."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.tasks = world.stream()
        self._texts = frozenset(t.text for t in self.tasks)
        self._lock = threading.Lock()
        self._pending: dict[str, list[int]] = {}
        self._episodes: dict[int, _Episode] = {}

    def register(self, index: int) -> Task:
        """Announce that task ``index`` is about to be sent; restarts its episode."""
        if not 0 <= index < len(self.tasks):
            raise IndexError(f"world {self.world.name!r} has no task {index}")
        task = self.tasks[index]
        with self._lock:
            self._episodes[index] = _Episode()
            queue = [i for i in self._pending.get(task.text, []) if i != index]
            queue = [i for i in queue if not self._finished(i)]
            self._pending[task.text] = [*queue, index]
        return task

    def answer(self, messages: object) -> Reply:
        request = parse_messages(messages)
        with self._lock:
            index = self._match(request)
            task = self.tasks[index]
            if request.turn >= task.turns:
                raise SimRequestError(
                    f"this task is an episode of {task.turns} turn(s); got turn {request.turn + 1}",
                    "too_many_turns",
                )
            episode = self._episodes[index]
            if episode.decision is None:
                episode.decision = decide(self.world, task, request.system_text)
                episode.system_text = request.system_text
            episode.answered.add(request.turn)
            strategy = episode.decision.strategy
        text = reply_text(self.world, task, strategy, request.turn)
        return Reply(text, request.prompt_words, count_words(text))

    def records(self) -> list[TaskRecord]:
        """The log, in stream order, of every task the model has answered."""
        with self._lock:
            indices = sorted(i for i, e in self._episodes.items() if e.decision is not None)
            return [self._record(i) for i in indices]

    def record(self, index: int) -> TaskRecord | None:
        with self._lock:
            episode = self._episodes.get(index)
            return None if episode is None or episode.decision is None else self._record(index)

    def reset(self) -> None:
        """Forget everything, e.g. between the control and the guided arm."""
        with self._lock:
            self._pending.clear()
            self._episodes.clear()

    def _finished(self, index: int) -> bool:
        episode = self._episodes.get(index)
        return episode is not None and len(episode.answered) >= self.tasks[index].turns

    def _match(self, request: ParsedRequest) -> int:
        pending = self._pending.get(request.first_user)
        if not pending:
            if request.first_user in self._texts:
                raise SimRequestError(
                    "this task was not registered by the harness", "task_not_registered"
                )
            raise SimRequestError(
                "unknown task: the first user message is not a task of this world", "unknown_task"
            )
        open_ = [i for i in pending if request.turn not in self._episodes[i].answered]
        if not open_:
            return pending[-1]  # every pending episode answered this turn: a retry
        # A later turn carries our previous answer, which tells apart two open
        # episodes of the same text (e.g. one the agent abandoned) when it differs.
        own = [i for i in open_ if request.turn > 0 and self._answered_with(i, request)]
        return (own or open_)[0]

    def _answered_with(self, index: int, request: ParsedRequest) -> bool:
        decision = self._episodes[index].decision
        if decision is None:
            return False
        expected = reply_text(self.world, self.tasks[index], decision.strategy, request.turn - 1)
        return expected == request.last_answer

    def _record(self, index: int) -> TaskRecord:
        task, episode = self.tasks[index], self._episodes[index]
        assert episode.decision is not None  # callers only ask for decided episodes
        return task_record(task, episode.system_text, episode.decision, len(episode.answered))
