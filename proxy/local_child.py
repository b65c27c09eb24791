"""The embedded model's process: llama.cpp's OpenAI-compatible server, exiting when
the proxy that started it is gone, even after a ``kill -9`` that gave the proxy no
chance to stop it (it would otherwise keep its memory for good).

``python -m proxy.local_child ARGS`` runs ``python -m llama_cpp.server ARGS``.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

PARENT_CHECK_S = 1.0


def _exit_with_parent(parent: int) -> None:
    # An orphan is re-parented (to init or a subreaper): its parent id changes.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def main() -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sys.argv = ["llama_cpp.server", *sys.argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
