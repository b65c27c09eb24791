"""Memory by meaning: centred embeddings, the rules that act on them, and the real
embedder (SmolLM2 in llama.cpp) finding tasks alike in meaning that share no words."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from proxy.config import GuidanceConfig
from proxy.hints.embedder import (
    BACKGROUND,
    MAX_TOKENS,
    PROMPT_TAIL,
    RELOAD,
    URGENT,
    Embedder,
)
from proxy.hints.meaning import MeaningMemory
from proxy.hints.recommend import Recommender
from proxy.hints.text import Vectorizer
from proxy.models import default_gguf, served_weights

ALPHA = "I used the alpha method: worked through it step by step. Done."
BETA = "Went with beta guesswork, skipping every check. Done."


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_centring_removes_the_direction_every_embedding_shares() -> None:
    common = vec(10, 0, 0, 0)
    a, b = common + vec(0, 1, 0, 0), common + vec(0, 0, 1, 0)
    assert float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b)) > 0.98  # raw
    memory = MeaningMemory(dim=4, capacity=10)
    for i in range(3):
        # The very first vector is all mean, nothing sets it apart: b goes first.
        memory.add(f"b{i}", f"b{i}", b, "sb")
        memory.add(f"a{i}", f"a{i}", a, "sa")
        memory.set_outcome(f"a{i}", None, 1.0)
        memory.set_outcome(f"b{i}", None, 0.0)
    near = memory.neighbours(a + vec(0, 0.1, 0, 0), k=10, min_similarity=0.3)
    assert {o.sid for o in near} == {"sa"} and len(near) == 3
    assert all(o.similarity > 0.9 for o in near)
    assert memory.neighbours(vec(1, 2), k=10, min_similarity=0.3) == []  # other model
    with pytest.raises(ValueError, match="dimensions"):
        memory.add("x", "x", vec(1, 2), "sa")


def test_an_outcome_that_comes_before_its_vector_is_kept() -> None:
    """Vectors arrive from the embedder thread after the outcomes: for the episode's
    first call and for a later call of an episode already stored."""
    memory = MeaningMemory(dim=4, capacity=10)
    memory.add("seed", "seed", vec(10, 0, 0, 1), "sb")  # the all-mean first vector
    memory.set_outcome("r1", None, 1.0)
    memory.add("r1", "ep", vec(10, 1, 0, 0), "sa")
    memory.set_outcome("r2", None, 0.0)  # the episode's second call, outcome first
    memory.add("r2", "ep", vec(10, 1, 0, 0), "sa")
    near = memory.neighbours(vec(10, 1, 0, 0), k=10, min_similarity=0.3)
    assert [(o.sid, o.success) for o in near] == [("sa", 0.0)]  # the later outcome


def recommender_by_meaning(per_kind: int, wins: dict[str, float],
                           **settings: float) -> Recommender:
    """Kind a (answered with alpha) and kind b (beta) in memory by meaning only: their
    texts share no words with each other or with the queries."""
    rec = Recommender(GuidanceConfig(**settings))  # type: ignore[arg-type]
    rec.use_meaning(4)
    for i in range(per_kind):
        for kind, answer, direction in (("a", ALPHA, vec(10, 1, 0, 0)),
                                        ("b", BETA, vec(10, 0, 1, 0))):
            rid = f"{kind}{i}"
            sid = rec.observe_call(rid, rid, f"{kind}{i}", answer)
            assert sid is not None
            rec.observe_meaning(rid, rid, direction, sid)
            rec.observe_outcome(rid, None, float(i < wins[kind] * per_kind))
    return rec


def test_meaning_names_what_worked_on_the_nearest_tasks_once_evidence_is_firm() -> None:
    query = vec(10, 1, 0.1, 0)  # near kind a
    firm = recommender_by_meaning(12, {"a": 0.9, "b": 0.9}).recommend_by_meaning(query)
    assert firm.strategy is not None and "alpha" in firm.strategy.text
    assert firm.source == "meaning" and firm.stats_json
    assert "11 tasks alike in meaning" in firm.stats_json
    thin = recommender_by_meaning(6, {"a": 1.0, "b": 1.0}).recommend_by_meaning(query)
    assert thin.strategy is None and thin.skip == "thin_evidence"  # 6 < min_evidence
    poor = recommender_by_meaning(12, {"a": 0.25, "b": 1.0}).recommend_by_meaning(query)
    assert poor.strategy is None and poor.skip == "low_success"
    # Without embeddings (mode retrieval, or the embedder failed to load): nothing.
    assert Recommender(GuidanceConfig()).recommend_by_meaning(query).skip == "thin_evidence"


GAMMA = "Gamma routine: filed it and waited for a reply. Done."


def observe_kind_c(rec: Recommender, start: int, count: int, answer: str,
                   wins: float) -> None:
    """Kind c: texts alike in words, whose embeddings sit near kind a's."""
    for i in range(start, start + count):
        rid = f"c{i}"
        sid = rec.observe_call(rid, rid, f"reconcile ledger {i} before the quarterly close",
                               answer)
        assert sid is not None
        rec.observe_meaning(rid, rid, vec(10, 1, 0, 0.2), sid)
        # Wins spread evenly through the run: a run of wins then of failures would
        # read as a change in what works.
        k = i - start
        rec.observe_outcome(rid, None, float(int((k + 1) * wins) > int(k * wins)))


def test_meaning_challenges_a_weak_answer_by_words_with_an_approach_little_tried() -> None:
    """Kind c's own approach (gamma) works half the time; the tasks nearest it in
    meaning (kind a) firmly show alpha working. Alpha is named until it has had
    ``meaning_challenge_tries`` tries on kind c; then the words' evidence decides."""
    task, query = "reconcile ledger 99 before the quarterly close", vec(10, 1, 0, 0.2)
    rec = recommender_by_meaning(12, {"a": 0.9, "b": 0.9})
    observe_kind_c(rec, 0, 12, GAMMA, wins=0.5)
    by_words = rec.recommend(task)
    assert by_words.strategy is not None and "Gamma" in by_words.strategy.text
    assert rec.challengeable(by_words)
    challenger = rec.challenge(by_words, query)
    assert challenger is not None and challenger.strategy is not None
    assert "alpha" in challenger.strategy.text and challenger.source == "meaning_challenge"
    # Three tries of alpha on kind c (one worked): the words' own evidence now decides.
    observe_kind_c(rec, 12, 3, ALPHA, wins=0.34)
    assert rec.challenge(rec.recommend(task), query) is None
    # Never where the words' answer is firm and strong, or where challenges are off.
    strong = recommender_by_meaning(12, {"a": 0.9, "b": 0.9})
    observe_kind_c(strong, 0, 12, GAMMA, wins=0.9)
    assert not strong.challengeable(strong.recommend(task))
    off = recommender_by_meaning(12, {"a": 0.9, "b": 0.9}, meaning_challenge_below=0.0)
    observe_kind_c(off, 0, 12, GAMMA, wins=0.5)
    assert not off.challengeable(off.recommend(task))
    # Nothing known here works (low_success): challengeable too.
    poor = recommender_by_meaning(12, {"a": 0.9, "b": 0.9})
    observe_kind_c(poor, 0, 12, GAMMA, wins=0.1)
    low = poor.recommend(task)
    assert low.skip == "low_success" and poor.challengeable(low)
    challenger = poor.challenge(low, query)
    assert challenger is not None and challenger.strategy is not None
    assert "alpha" in challenger.strategy.text


KIND_A = ["The ship manifest for voyage {} lists 412 containers but the yard counted 409. "
          "Reconcile the counts.",
          "Yard count for voyage {} is 388 boxes while the manifest says 391. "
          "Find the discrepancy."]
KIND_B = ["Write a short birthday poem for {}, who loves gardening.",
          "Compose a few cheerful rhyming lines for {}'s birthday card."]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Lea"]
VOYAGES = ["NL-221", "PX-907", "AF-034", "NL-118", "PX-300", "AF-777", "NL-5", "PX-61",
           "AF-72", "NL-83", "PX-94", "AF-15"]
RAIL = ("The rail waybill for train 4471 does not match what is actually loaded on the "
        "wagons. Sort it out.")
VERSES = "Write some verses for Omar's retirement party."


def kind_tasks() -> list[tuple[str, str]]:
    """(task, the answer that succeeds on it): count mismatches want alpha, poems beta."""
    return [pair for i in range(12) for pair in (
        (KIND_A[i % 2].format(VOYAGES[i]), ALPHA), (KIND_B[i % 2].format(NAMES[i]), BETA))]


@pytest.fixture(scope="module")
def embedder(model_cache: Path) -> Iterator[Embedder]:
    e = Embedder(served_weights(default_gguf(), model_cache), threads=1, batch_threads=2,
                 cache_size=100)
    assert e.load() == 576  # SmolLM2-135M's hidden size
    yield e
    e.close()


def test_tasks_alike_in_meaning_share_evidence_where_words_do_not(embedder: Embedder) -> None:
    rec = Recommender(GuidanceConfig())
    rec.use_meaning(embedder.dim)
    for i, (task, answer) in enumerate(kind_tasks()):
        sid = rec.observe_call(f"r{i}", f"r{i}", task, answer)
        assert sid is not None
        rec.observe_meaning(f"r{i}", f"r{i}", embedder.submit(task).result(), sid)
        rec.observe_outcome(f"r{i}", None, 1.0)
    words = Vectorizer(512)
    assert rec.meaning is not None
    for query, expected in ((RAIL, ALPHA), (VERSES, BETA)):
        # No past task is near by words (the memory by words' threshold is 0.2)...
        assert max(float(words.vector(query) @ words.vector(t)) for t, _ in kind_tasks()) < 0.2
        assert rec.recommend(query).skip == "thin_evidence"
        # ...and the nearest by meaning are all of the right kind.
        vector = embedder.submit(query).result()
        nearest = rec.meaning.neighbours(vector, 8, -1.0)
        assert len(nearest) == 8, query
        assert {o.sid for o in nearest} == {rec.catalog.assign(expected)}, query
    # The waybill is near enough to the manifests for a hint. The verses are placed
    # right but looser (8 poems above the 0.1 threshold, as short texts often are in
    # this space): fewer outcomes than min_evidence, so no hint rather than a guess.
    got = rec.recommend_by_meaning(embedder.submit(RAIL).result())
    assert got.strategy is not None and "alpha" in got.strategy.text, got.stats_json
    assert rec.recommend_by_meaning(embedder.submit(VERSES).result()).skip == "thin_evidence"


def test_embedder_caches_and_serves_a_waiting_hint_first(embedder: Embedder) -> None:
    first = embedder.submit(RAIL).result()
    again = embedder.submit(" the RAIL waybill for train 4471 does not match what is "
                            "actually loaded on the wagons sort it out")
    assert again.done() and again.result() is first  # same normalized text: cached
    gate, started, order = threading.Event(), threading.Event(), []

    def hold() -> None:
        started.set()
        gate.wait()

    embedder._run(BACKGROUND, hold)  # hold the worker
    try:
        assert started.wait(10)
        reload = embedder.submit("A task from before the restart", RELOAD)
        queued = [embedder.submit(f"Background task number {i}") for i in range(3)]
        urgent = embedder.submit("A hint is waiting on this one", URGENT)

        def done(name: str) -> Callable[[object], None]:
            return lambda _: order.append(name)

        urgent.add_done_callback(done("urgent"))
        reload.add_done_callback(done("reload"))
        for i, future in enumerate(queued):
            future.add_done_callback(done(f"bg{i}"))
        assert [embedder.pending(p) for p in (URGENT, BACKGROUND, RELOAD)] == [1, 3, 1]
    finally:
        gate.set()
    for future in [urgent, reload, *queued]:
        future.result(timeout=30)
    assert order == ["urgent", "bg0", "bg1", "bg2", "reload"]
    assert [embedder.pending(p) for p in (URGENT, BACKGROUND, RELOAD)] == [0, 0, 0]


def test_closing_finishes_the_running_job_and_cancels_the_queued() -> None:
    e = Embedder(default_gguf(), threads=1, batch_threads=1, cache_size=10)
    gate, started = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        gate.wait()
        return "finished"

    running = e._run(URGENT, hold)
    try:
        assert started.wait(10)
        queued = e.submit("never embedded")
        closer = threading.Thread(target=e.close)
        closer.start()
        deadline = time.monotonic() + 10
        while e._jobs.qsize() < 2:  # the stop is queued (before the queued job)
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        gate.set()
    closer.join(timeout=30)
    assert running.result() == "finished" and queued.cancelled()
    assert e.submit("after close").cancelled()  # never queued, never hangs


def test_a_long_task_is_cut_before_the_prompt_closes_it(embedder: Embedder) -> None:
    long = " ".join(f"step {i}: check the waybill against wagon {i}." for i in range(80))
    prompt = embedder._prompt(long)
    assert prompt.endswith(PROMPT_TAIL)  # the embedding is read after these words
    tokens = embedder._model().tokenize(prompt.encode(), add_bos=False)
    assert MAX_TOKENS - 4 <= len(tokens) <= MAX_TOKENS
    assert embedder.submit(long).result().shape == (embedder.dim,)


def test_embeddings_come_from_the_float16_copy_and_match_the_model_itself(
        embedder: Embedder, model_cache: Path) -> None:
    weights = embedder.model_path
    assert weights.parent == model_cache and weights.name.endswith(".F16.gguf")
    plain = Embedder(default_gguf(), threads=1, batch_threads=2, cache_size=10)
    try:
        for text in (RAIL, VERSES):
            a, b = embedder.submit(text).result(), plain.submit(text).result()
            cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            assert cos > 0.995, (text, cos)  # the same model, rounded differently
    finally:
        plain.close()
