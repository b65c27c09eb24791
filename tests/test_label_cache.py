"""The gate's labels, kept with the adapter they came from, spare the next night's
baseline from asking the same adapter the same tasks again."""

from __future__ import annotations

import json
from pathlib import Path

from learner import label_cache
from learner.gate import generate_labels
from proxy.hints.strategies import StrategyCatalog
from proxy.models import default_gguf

FP = label_cache.fingerprint("0" * 64, 12)


def test_labels_round_trip_only_under_the_same_fingerprint(tmp_path: Path) -> None:
    labels = {"Reset a VPN token": "reissue the token", "naïve café ✓": "ask first"}
    (tmp_path / label_cache.FILE).write_text(label_cache.dumps(labels, FP), encoding="utf-8")
    assert label_cache.load(tmp_path, FP) == labels
    for other in (label_cache.fingerprint("1" * 64, 12), label_cache.fingerprint("0" * 64, 16)):
        assert other != FP and label_cache.load(tmp_path, other) == {}


def test_missing_or_unreadable_labels_mean_asking_again(tmp_path: Path) -> None:
    assert label_cache.load(tmp_path, FP) == {}
    for text in ("{not json", json.dumps(["a list"]),
                 json.dumps({"fingerprint": FP, "labels": ["a", "list"]})):
        (tmp_path / label_cache.FILE).write_text(text, encoding="utf-8")
        assert label_cache.load(tmp_path, FP) == {}
    (tmp_path / label_cache.FILE).write_text(
        json.dumps({"fingerprint": FP, "labels": {"task": "label", "bad": 3}}))
    assert label_cache.load(tmp_path, FP) == {"task": "label"}


def test_known_tasks_are_not_asked_again(tmp_path: Path) -> None:
    catalog = StrategyCatalog()
    # Everything known: the model is never even loaded (this base does not exist).
    all_known = generate_labels(tmp_path / "absent.gguf", None, catalog, ["a", "b", "a"],
                                threads=1, max_tokens=8, desc="t", known={"a": "x", "b": "y"})
    assert all_known.by_task == {"a": "x", "b": "y"}
    assert all_known.generated == 0 and all_known.reused == 2 and all_known.seconds == 0
    some = generate_labels(default_gguf(), None, catalog,
                           ["Reset a VPN token", "Plan a trip to Kyoto", "Reset a VPN token"],
                           threads=1, max_tokens=8, desc="t",
                           known={"Reset a VPN token": "cached label"})
    assert some.by_task["Reset a VPN token"] == "cached label"
    assert some.generated == 1 and some.reused == 1
    assert isinstance(some.by_task["Plan a trip to Kyoto"], str)
    assert some.seconds >= some.load_seconds > 0
