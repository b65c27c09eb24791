"""bench.embeddings_file: the small model's embeddings kept between replays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.embeddings_file import EmbeddingsFile


def test_embeddings_file_answers_a_second_run(tmp_path: Path) -> None:
    """Texts in the file are not embedded again, across runs; a file made with another
    model is refused rather than silently measuring something else."""
    calls: list[str] = []

    def embed(text: str) -> np.ndarray:
        calls.append(text)
        return np.full(4, float(len(text)), dtype=np.float32)

    path = tmp_path / "emb.npz"
    first = EmbeddingsFile(path, "model-a.gguf:100")
    wrapped = first.wrap(embed)
    assert wrapped("Fix the  build") is wrapped("fix the build")  # one normalized key
    wrapped("Ship it")
    first.save()
    assert len(calls) == 2 and path.exists()
    second = EmbeddingsFile(path, "model-a.gguf:100")
    again = second.wrap(embed)
    assert float(again("fix the build")[0]) == len("Fix the  build")
    assert len(calls) == 2
    again("a new task")
    assert len(calls) == 3
    with pytest.raises(SystemExit, match=r"model-a\.gguf:100"):
        EmbeddingsFile(path, "model-b.gguf:100")
    path.write_text("not numpy", encoding="utf-8")
    with pytest.raises(SystemExit, match="not an embeddings file"):
        EmbeddingsFile(path, "model-a.gguf:100")
