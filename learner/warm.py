"""Continuing the serving adapter instead of training from scratch every night.

A cold run learns everything recorded so far, so its cost grows with the history (three
epochs over 2,000 trajectories do not fit the nightly budget on a 2-core CPU). A warm
run starts from the serving adapter's own weights, published beside its GGUF, and
trains on what that adapter has not seen — the episodes recorded after its data
window — plus an equal replay sample of older ones, relabelled with today's evidence,
so drift is followed and old kinds of task are rehearsed. The gate still compares the
result with the serving adapter on held-out and replay tasks: a warm run that forgets
is refused like any other, and the next night starts again from the serving adapter
with the refused night's episodes still counted as new.

A run is cold when there is no serving adapter, it has no PEFT weights (published
before warm starts existed, or by hand), it was trained on another base model or with
another LoRA shape, or ``python -m learner train --cold`` asks for it; and when its
weights turn out unreadable, the run says so and trains from scratch instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from learner import publish
from learner.dataset import Dataset
from learner.train import Example, TrainSettings

WARM_EPOCHS = 2
WARM_MIN_REPLAY = 64  # older examples rehearsed beside the new ones, at least


@dataclass(frozen=True)
class WarmStart:
    version: str
    weights: Path  # the PEFT adapter folder
    since: datetime | None  # end of that version's data window


def find(state_dir: Path, base_sha256: str, settings: TrainSettings) -> WarmStart | None:
    """The serving adapter, when this run can continue it; None to train from scratch."""
    current = publish.read_current(state_dir)
    if current is None:
        return None
    weights = publish.peft_weights(state_dir, current.version)
    if weights is None:
        return None
    manifest = publish.read_manifest(state_dir, current.version)
    if manifest.get("base_model", {}).get("sha256") != base_sha256:
        return None
    if not _same_shape((manifest.get("train") or {}).get("settings") or {}, settings):
        return None
    until = (manifest.get("data_window") or {}).get("to")
    return WarmStart(current.version, weights, datetime.fromisoformat(until) if until else None)


def _same_shape(recorded: dict[str, Any], settings: TrainSettings) -> bool:
    return (recorded.get("r") == settings.r and recorded.get("alpha") == settings.alpha
            and tuple(recorded.get("target_modules") or ()) == settings.target_modules)


def examples(dataset: Dataset, since: datetime | None, seed: int = 0) -> list[Example]:
    """Training examples recorded after ``since``, plus as many older ones (at least
    ``WARM_MIN_REPLAY``), sampled reproducibly, oldest first."""
    pairs = list(zip(dataset.train_items, dataset.train, strict=True))
    new = [ex for it, ex in pairs if since is None or it.episode.started_at > since]
    older = [ex for it, ex in pairs if since is not None and it.episode.started_at <= since]
    k = min(len(older), max(len(new), WARM_MIN_REPLAY))
    keep = set(random.Random(seed).sample(range(len(older)), k))
    return [ex for i, ex in enumerate(older) if i in keep] + new
