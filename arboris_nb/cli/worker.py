"""``arboris-nb worker``: a Celery worker for book jobs (needs the ``celery`` extra)."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run a Celery worker for book jobs",
        description="Start a Celery worker that generates book units. The global limit is "
        "shared through Redis by every worker; the API key is read from this process's "
        "environment (never from the broker). Results are recorded in Redis, where the "
        "submitter collects them; ARBORIS_STORE (a local copy) is optional: set it to off "
        "on machines without one. See docs/book-queue.md.",
    )
    p.add_argument(
        "--concurrency", type=int, default=2, metavar="K", help="pool processes (default: 2)"
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="Redis URL (default: ARBORIS_CELERY_BROKER, ARBORIS_REDIS_URL or "
        "redis://127.0.0.1:6379/0)",
    )
    p.add_argument("--hostname", metavar="NAME", help="worker name (default: celery@host)")
    p.add_argument("--loglevel", default="INFO", help="Celery log level (default: INFO)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.broker:
        # Read by the Celery app at import, and inherited by the pool processes.
        os.environ["ARBORIS_CELERY_BROKER"] = args.broker
    try:
        from ..queue.celery_app import app
    except ImportError as exc:  # pragma: no cover - base install without the extra
        raise ConfigError(
            f"the worker needs celery: pip install 'arboris-nb[celery]' ({exc})"
        ) from None
    argv = [
        "worker",
        f"--concurrency={args.concurrency}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0
