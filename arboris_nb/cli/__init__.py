"""``arboris-nb``: one subcommand per module, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import ConfigError, StateError

__all__ = ["build_parser", "main"]

# Subcommand modules; each imports its heavy dependencies inside its run function.
_COMMANDS = ("bench", "book", "generate", "runs", "serve_mock", "worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arboris-nb", description="Parallel chapter-version generation."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status: 2 = usage or configuration error,
    1 = the command cannot be done in the current state (e.g. the job already exists)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"arboris-nb: configuration error: {exc}", file=sys.stderr)
        return 2
    except StateError as exc:  # nothing to fix in the configuration: the message says what to do
        print(f"arboris-nb: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `arboris-nb runs list | head`: the reader left. Point stdout at devnull so the
        # interpreter's final flush does not raise again (the recipe in Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
