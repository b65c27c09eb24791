"""Drive Debian's real headless Chromium from tests, and read the DOM it dumps."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)
# Headless Chromium advances a virtual clock and waits for pending fetches while it
# runs: the page's API calls finish before the DOM is dumped or the screenshot taken.
VIRTUAL_TIME_MS = 20_000


def chromium_path() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: scripts/setup installs Debian's package "
                    "(apt-get install chromium)")
    return exe


def run_chromium(url: str, *args: str, timeout: float = 120) -> str:
    """Load ``url`` in a fresh profile with ``args`` (--dump-dom, --screenshot=...);
    return stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [chromium_path(), *FLAGS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={VIRTUAL_TIME_MS}", *args, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"chromium failed ({out.returncode}): {out.stderr[-2000:]}"
    return out.stdout


def dump_dom(url: str, width: int = 1400, height: int = 2000) -> Dom:
    dom = Dom()
    dom.feed(run_chromium(url, "--dump-dom", f"--window-size={width},{height}"))
    return dom


def screenshot(url: str, dest: Path, width: int = 1400, height: int = 3000) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(url, f"--screenshot={dest}", f"--window-size={width},{height}")
    assert dest.exists() and dest.stat().st_size > 10_000, "no screenshot written"
    return dest


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with ``tag`` whose attributes equal ``attrs`` (``_`` for ``-``)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                    child.attrs.get(k) == v for k, v in want.items()):
                found.append(child)
            found.extend(child.find(tag, **attrs))
        return found


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
         "source", "track", "wbr"}


class Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]
        self.ids: dict[str, Element] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if "id" in element.attrs:
            self.ids[element.attrs["id"]] = element
        if tag not in _VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for element in self.stack[1:]:
            element.text += data

    def __getitem__(self, element_id: str) -> Element:
        return self.ids[element_id]

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return self.root.find(tag, **attrs)
