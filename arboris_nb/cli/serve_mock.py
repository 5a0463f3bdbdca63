"""``arboris-nb serve-mock``: run the OpenAI-compatible mock server until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..mockserver import MockConfig

__all__ = ["BEHAVIOUR_FLAGS", "add_behaviour_flags", "behaviour_fields", "register", "run"]

# (flag, MockConfig field, type, metavar, help). Flags default to None and only the ones
# given reach MockConfig, so the defaults live in one place (the dataclass), not two.
_FIELD_FLAGS: tuple[tuple[str, str, Any, str, str], ...] = (
    ("--ttft", "ttft_s", float, "SECONDS", "time to first token"),
    ("--tokens-per-s", "tokens_per_s", float, "RATE", "token rate after the first token"),
    ("--output-tokens", "output_tokens", int, "N", "tokens per reply (max_tokens caps it)"),
    ("--jitter", "jitter", float, "FRACTION", "latency noise, e.g. 0.1 = ±10%%"),
    ("--prefill", "prefill", float, "RATE", "prompt tokens read per second, server-wide"),
    ("--straggler-rate", "straggler_rate", float, "FRACTION", "fraction of requests slowed"),
    ("--straggler-factor", "straggler_factor", float, "X", "how many times slower they are"),
    ("--seed", "seed", int, "N", "seed of faults, jitter and generated text"),
    ("--error-rate", "error_rate", float, "FRACTION", "fraction of requests answered 500"),
    ("--disconnect-rate", "disconnect_rate", float, "FRACTION", "fraction of streams cut"),
    ("--reply", "reply", str, "TEXT", "fixed reply instead of generated pseudo-text"),
    ("--model", "model", str, "ID", "model id reported by /v1/models"),
)

# The four provider behaviours (docs/mockserver.md), shared with ``bench --mock-…``:
# (flag, field, int or float, lowest allowed, lowest excluded, metavar, help).
BEHAVIOUR_FLAGS: tuple[tuple[str, str, type, float, bool, str, str], ...] = (
    ("--max-concurrent", "max_concurrent", int, 1, False, "N",
     "1. concurrency cap: 429 beyond this many requests in flight"),
    ("--window", "window_s", float, 0, True, "SECONDS",
     "2. a 429 opens a rate-limit window this long that refuses every request"),
    ("--request-budget", "request_budget", int, 1, False, "N",
     "3. requests per budget period (a bucket refilled continuously; x-ratelimit-* headers)"),
    ("--token-budget", "token_budget", int, 1, False, "N",
     "3. tokens per budget period (prompt + max_tokens charged on admission)"),
    ("--budget-period", "budget_period_s", float, 0, True, "SECONDS",
     "3. time in which an empty budget refills"),
    ("--capacity", "capacity", int, 1, False, "N",
     "4. sequences generated at once; the rest queue (FIFO)"),
    ("--slowdown", "slowdown", float, 0, False, "X",
     "4. latency factor 1 + X * load (see docs)"),
    ("--rpm-limit", "rpm_limit", int, 1, False, "N",
     "429 beyond this many requests per rolling minute"),
    ("--retry-after", "retry_after_s", float, 0, False, "SECONDS",
     "Retry-After of a refusal by the cap or the RPM limit"),
)  # fmt: skip


def _bounded(flag: str, kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` at or above (or, ``strict``, above) ``low``."""
    whole = "whole number" if kind is int else "number"
    rule = f"a {whole} {'above' if strict else 'of at least'} {low:g}"

    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{flag} must be {rule}, got {raw!r}")
        return value

    return parse


def add_behaviour_flags(group: Any, prefix: str = "") -> None:
    """Add the behaviour flags to ``group``: ``--window`` or, with ``prefix="mock-"``,
    ``--mock-window`` (dest ``mock_window_s``)."""
    dest_prefix = prefix.replace("-", "_")
    for flag, name, kind, low, strict, metavar, text in BEHAVIOUR_FLAGS:
        full = f"--{prefix}{flag[2:]}"
        group.add_argument(
            full,
            dest=dest_prefix + name,
            type=_bounded(full, kind, low, strict),
            metavar=metavar,
            help=text,
        )
    group.add_argument(
        f"--{prefix}no-ratelimit-headers",
        dest=dest_prefix + "ratelimit_headers",
        action="store_false",
        default=None,
        help="3. leave the x-ratelimit-* headers out of the answers",
    )


def behaviour_fields(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The MockConfig fields of the behaviour flags that were given."""
    dest_prefix = prefix.replace("-", "_")
    names = [name for _, name, *_ in BEHAVIOUR_FLAGS] + ["ratelimit_headers"]
    given = {name: getattr(args, dest_prefix + name, None) for name in names}
    return {name: value for name, value in given.items() if value is not None}


def _fail_requests(text: str) -> dict[int, int]:
    """Parse ``2:500,5:429`` into ``{2: 500, 5: 429}``."""
    result: dict[int, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        n, sep, status = item.partition(":")
        try:
            if not sep:
                raise ValueError
            result[int(n)] = int(status)
        except ValueError:
            msg = f"expected REQUEST:STATUS pairs like 2:500,5:429, got {item!r}"
            raise argparse.ArgumentTypeError(msg) from None
    return result


class _MockDefaults(argparse.HelpFormatter):
    """Shows each mock field's default (read from ``MockConfig``) in its help.

    Read when the help is shown, not when the parser is built: the mock server module
    loads aiohttp, and every other command's start would pay for it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if action.dest not in _FIELD_NAMES:
            return text
        from ..mockserver import MockConfig

        default = getattr(MockConfig(), action.dest)
        return f"{text} (default: {'off' if default is None else default})"


_FIELD_NAMES = frozenset(
    [name for _, name, _, _, _ in _FIELD_FLAGS] + [name for _, name, *_ in BEHAVIOUR_FLAGS]
)
_SWITCHES = (
    ("--reject-n", "reject_n", "answer n > 1 with 400, as providers without n do"),
    ("--prompt-cache", "prompt_cache", "serve a prompt read before from the prompt cache"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve-mock`` subcommand (its handler is ``run``)."""
    parser = subparsers.add_parser(
        "serve-mock",
        help="run the OpenAI-compatible mock server",
        description="Serve an OpenAI-compatible mock with a latency, load and fault model "
        "(see docs/mockserver.md). Prints the base URL on stderr; Ctrl-C stops it.",
        formatter_class=_MockDefaults,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="0 = any free port (default: %(default)s)"
    )
    for flag, name, kind, metavar, text in _FIELD_FLAGS:
        parser.add_argument(flag, dest=name, type=kind, metavar=metavar, help=text)
    add_behaviour_flags(parser.add_argument_group("provider behaviours (see docs/mockserver.md)"))
    parser.add_argument(
        "--fail-requests",
        type=_fail_requests,
        metavar="N:STATUS,...",
        help="answer request N (1-based arrival order) with STATUS, e.g. 2:500,5:429",
    )
    parser.add_argument(
        "--reply-format",
        choices=("text", "json"),
        help="generated reply as text or Arboris-Novel chapter JSON (default: text)",
    )
    # Switches: present = on; absent leaves MockConfig's default.
    for flag, name, text in _SWITCHES:
        parser.add_argument(flag, dest=name, action="store_true", default=None, help=text)
    parser.add_argument(
        "--require-key-env",
        metavar="VAR",
        help="require the API key held in environment variable VAR (401 otherwise)",
    )
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> MockConfig:
    from ..mockserver import MockConfig

    names = [name for _, name, _, _, _ in _FIELD_FLAGS] + [name for _, name, _ in _SWITCHES]
    names += ["fail_requests", "reply_format"]
    fields = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    fields.update(behaviour_fields(args))
    if args.require_key_env:
        key = os.environ.get(args.require_key_env)
        if not key:
            raise ValueError(f"environment variable {args.require_key_env} is not set or empty")
        fields["require_key"] = key
    return MockConfig(**fields)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Returns 0; 2 for an invalid configuration, 1 if binding fails."""
    from ..mockserver import serve

    try:
        config = _config(args)
    except ValueError as exc:
        print(f"serve-mock: {exc}", file=sys.stderr)
        return 2

    def ready(base_url: str) -> None:
        print(f"mock server listening on {base_url}  (Ctrl-C to stop)", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(config, args.host, args.port, on_ready=ready))
    except OSError as exc:  # e.g. the port is taken
        print(f"serve-mock: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover - python -m arboris_nb.cli.serve_mock [flags]
    _parser = argparse.ArgumentParser(prog="serve-mock")
    register(_parser.add_subparsers(dest="command"))
    _args = _parser.parse_args(["serve-mock", *sys.argv[1:]])
    sys.exit(_args.func(_args))
