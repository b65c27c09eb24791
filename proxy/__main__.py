"""``python -m proxy --config FILE``: run the proxy under uvicorn."""

from __future__ import annotations

import os

# One BLAS thread: the proxy's vector work is small and latency-bound, and a second BLAS
# thread only fights the event loop and llama.cpp for the cores (3x slower measured).
# Must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import logging
import sys
from pathlib import Path

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (default: ./config.yaml when present)")
    args = parser.parse_args(argv)
    path = args.config
    if path is None and Path("config.yaml").is_file():
        path = Path("config.yaml")
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"tactician: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(config.logging)
    import uvicorn  # noqa: PLC0415

    from proxy.app import create_app  # noqa: PLC0415

    logging.getLogger("tactician").info(
        "listening on http://%s (store %s)", config.listen, config.store_path
    )
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=config.logging.level.lower(),
        access_log=False,  # access lines would carry query strings; the store has the calls
        proxy_headers=False,  # X-Forwarded-* is never trusted here; parsing it costs time
        server_header=False,  # relayed answers keep the upstream's, not "uvicorn" twice
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
