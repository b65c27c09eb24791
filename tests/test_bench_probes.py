"""The small-model probes: bench.unseen (can it name new approaches?), bench.labels
(what each published adapter chooses), bench.label_latency (its labels from the model
file and from the float16 copy), bench.colocated (generation time beside a CPU-heavy
neighbour) and bench.prompt_cache (does the hint leave an upstream's prompt cache
working?), with the real llama.cpp and SmolLM2 GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import colocated, embed_latency, label_latency, labels, prompt_cache, unseen
from bench.sim import world_from_data
from proxy.config import load_config
from proxy.hints.llm import SmallModel
from proxy.hints.strategies import Strategy, StrategyCatalog
from proxy.models import small_model_weights
from tests.adapters import publish, random_adapter
from tests.test_sim_world import BASE, mutated


def test_strategies_no_prior_ever_uses_are_found_changes_included() -> None:
    assert unseen.never_used_unprompted(world_from_data(BASE)) == set()
    data = mutated(lambda d: d["strategies"].append(
        {"id": "novel", "names": ["novel idea"], "says": ["I tried a novel idea."]}))
    assert unseen.never_used_unprompted(world_from_data(data)) == {"novel"}
    data["phases"][1]["changes"]["f2"] = {"prior": {"novel": 1.0}}
    assert unseen.never_used_unprompted(world_from_data(data)) == set()


def test_unseen_probe_asks_the_real_model_about_every_family(tmp_path: Path) -> None:
    world = tmp_path / "tiny.yaml"
    world.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "unseen.json"
    assert unseen.main(["--world", str(world), "--samples", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    probe = report["worlds"]["tiny"]
    assert probe["never_used_unprompted"] == [] and set(probe["families"]) == {"f1", "f2"}
    assert report["totals"]["answers"] == 2 * 2 * 2  # families x samples x prompts
    assert all(f["example"]["product"] and f["example"]["method"]
               for f in probe["families"].values())


def test_labels_scores_each_version_by_the_hint_it_would_send(tmp_path: Path) -> None:
    """Two versions of one adapter whose catalogs send every label it generates to the
    last phase's best strategy (beta) or to the other one (alpha): all right, none."""
    world_file = tmp_path / "tiny.yaml"
    world_file.write_text(yaml.safe_dump(BASE))
    world = world_from_data(BASE)
    texts = {t.text for t in world.stream() if t.phase == "p3"}
    adapter = random_adapter(tmp_path / "a.gguf", seed=1, scale=0.35)
    # On the weights the proxy evaluates, which bench.labels loads as the proxy does.
    model = SmallModel(small_model_weights(load_config({})), threads=1, max_tokens=12)
    model.load(adapter, "probe", None)
    generated = {model.submit(text).result()[0] for text in texts}
    model.close()
    state = tmp_path / "state"
    # Named as the learner names them: bench.labels lists versions the way it does.
    for version, says in (("v000001", "Approach: beta route."),
                          ("v000002", "I used the alpha plan.")):
        cat = StrategyCatalog.from_json(json.dumps(
            [Strategy(f"s{i}", says, label).__dict__ for i, label in enumerate(generated)]))
        publish(state, version, adapter, cat)
    out = tmp_path / "labels.json"
    assert labels.main(["--world", str(world_file), "--state", str(state),
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["phase"] == "p3" and report["new_domains"] == []
    families = {t.family for t in world.stream() if t.phase == "p3"}
    for version, right in (("v000001", True), ("v000002", False)):
        got = report["versions"][version]
        assert set(got) == families
        assert sum(f["tasks"] for f in got.values()) == len(texts)
        assert all(f["right"] == (f["tasks"] if right else 0) for f in got.values())


def test_colocated_times_the_model_alone_and_beside_a_niced_neighbour(
        tmp_path: Path) -> None:
    out = tmp_path / "colocated.json"
    assert colocated.main(["--tasks", "3", "--nice", "10", "--neighbour", "torch:1",
                           "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["neighbour"], r.get("nice")) for r in rows] == [
        (None, None), ("torch x1", 10), (None, None)]
    assert all(r["tasks"] == 3 and 0 < r["p50_ms"] <= r["max_ms"] for r in rows)


def test_a_hint_after_the_system_prompt_keeps_llama_cpp_prefix_cache(tmp_path: Path) -> None:
    """The real llama.cpp server re-evaluates a ~500-token system prompt on every call
    when the hint comes first (each call's hint differs), and only the hint and task
    when it comes last: an order of magnitude apart on this machine (~17x)."""
    out = tmp_path / "cache.json"
    assert prompt_cache.main(["--rounds", "1", "--block", "3", "--rules", "16",
                              "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["calls_counted"] == {"end": 2, "start": 2}
    assert report["system_prompt_tokens"] > 400
    assert report["start_over_end"] > 3


def test_embedding_latency_times_four_variants_side_by_side(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert embed_latency.main(["--texts-per-world", "1", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    rows.pop("embedding")  # the header
    assert list(rows) == ["mean, Q4_1 (before)", "eol, Q4_1", "mean, float16",
                          "eol, float16 (now)"]
    assert rows["mean, Q4_1 (before)"][3].startswith("1.00")
    tokens = {name: int(cells[0].split()[0]) for name, cells in rows.items()}
    assert tokens["eol, float16 (now)"] > tokens["mean, float16"]  # the prompt's words
    assert tokens["eol, Q4_1"] == tokens["eol, float16 (now)"]  # one tokenizer
    assert "reproduce: python -m bench.embed_latency" in out


def test_label_latency_times_both_weights_side_by_side(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the trained PEFT model beside the adapter (a hand-made one here) there is
    nothing to check the decisions against: that column says so."""
    world_file = tmp_path / "tiny.yaml"
    world_file.write_text(yaml.safe_dump(BASE))
    adapter = random_adapter(tmp_path / "a.gguf", seed=1)
    state = tmp_path / "state"
    publish(state, "v000001", adapter, StrategyCatalog())
    assert label_latency.main(["--world", str(world_file), "--state", str(state),
                               "--texts", "4", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith("| v000001")]
    assert [r[1] for r in rows] == ["Q4_1 (the file)", "float16 copy"]
    assert rows[0][4] == "1.00" and all(float(r[2]) > 0 for r in rows)
    assert [r[5] for r in rows] == ["–", "–"] and rows[0][6] == "4/4 |"
    assert "reproduce: python -m bench.label_latency --world" in out
