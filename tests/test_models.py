"""The small model's files: the wheel's GGUF and the float16 copy hints and embeddings
are evaluated from."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from proxy.config import load_config
from proxy.models import (
    default_gguf,
    f16_copy,
    model_cache_dir,
    served_weights,
    small_model_weights,
)


def test_the_cache_follows_xdg_cache_home(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert model_cache_dir() == tmp_path / "tactician" / "models"


def test_the_copy_is_made_once_holds_the_same_weights_and_follows_a_new_source(
        tmp_path: Path) -> None:
    source = tmp_path / "src" / default_gguf().name
    source.parent.mkdir()
    shutil.copyfile(default_gguf(), source)
    cache = tmp_path / "cache"
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    copy = f16_copy(source, cache)
    assert logger.level == level  # quiet during the conversion only
    made = copy.stat().st_mtime_ns
    assert f16_copy(source, cache) == copy and copy.stat().st_mtime_ns == made  # reused
    assert [p.name for p in cache.iterdir()] == [copy.name]  # no temporary left behind

    q41, f16 = GGUFReader(str(source)), GGUFReader(str(copy))
    q41_tensors = {t.name: t for t in q41.tensors}
    assert {t.name for t in f16.tensors} == set(q41_tensors)
    matrices = [t for t in f16.tensors if len(t.shape) == 2]
    assert matrices and all(t.tensor_type == GGMLQuantizationType.F16 for t in matrices)
    # Dequantized Q4_1 against its float16 copy: the same values to float16's rounding.
    name = "blk.0.ffn_up.weight"
    want = dequantize(q41_tensors[name].data, q41_tensors[name].tensor_type)
    got = next(t for t in f16.tensors if t.name == name).data.astype(np.float32)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-3, atol=1e-5)

    os.utime(source, ns=(made + 10**9, made + 10**9))  # a newer source (an upgrade)
    newer = f16_copy(source, cache)
    assert newer != copy and [p.name for p in cache.iterdir()] == [newer.name]


def test_a_file_that_is_not_a_model_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(default_gguf().read_bytes()[: 1 << 20])
    cache = tmp_path / "cache"
    level = logging.getLogger("llama-cpp-python").level
    with pytest.raises(OSError, match="could not convert"):
        f16_copy(broken, cache)
    assert list(cache.iterdir()) == []
    assert logging.getLogger("llama-cpp-python").level == level


def test_the_model_is_evaluated_from_its_copy_unless_off_or_none_can_be_made(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = default_gguf()
    on = small_model_weights(load_config({}))
    assert on.parent == model_cache_dir() and on.name.endswith(".F16.gguf")
    assert small_model_weights(load_config({"guidance": {"model_f16": False}})) == source
    assert served_weights(source, None) == source
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING, logger="tactician.models"):
        assert served_weights(source, blocked / "models") == source  # slower, not broken
    assert "no float16 copy" in caplog.text
    missing = tmp_path / "missing.gguf"  # left to the loader, which reports it
    assert served_weights(missing, tmp_path / "cache") == missing
