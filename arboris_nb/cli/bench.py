"""``arboris-nb bench``: a concurrency sweep from the shell, on a real API or the mock server.

``--mock`` starts :class:`~arboris_nb.mockserver.MockServer` in this process and goes
through the real ``OpenAIBackend`` over HTTP, so the numbers include the whole client path;
``--mock-…`` flags give it any of the four provider behaviours (docs/mockserver.md).
``auto`` in ``--concurrency`` is one more sweep point (a fresh adaptive limit per run);
after the table, the recommended fixed limit is printed. With ``--mock`` every run starts
on a reset mock (budgets full, no window open) and a forgotten client budget: a sweep point
must not inherit the rate budget an earlier one spent. A real API cannot be reset; its
runs share the account's budget (interleaving spreads that over the settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import LLMConfig
from ..errors import ConfigError
from ._api import add_api_flags, config_from_args
from .serve_mock import add_behaviour_flags, behaviour_fields

if TYPE_CHECKING:
    from ..analysis.sweep import SweepResult

__all__ = ["JSON_KEYS", "register", "run"]

#: Keys of each run summary printed by ``--json`` (a contract: keep them).
JSON_KEYS = (
    "run_id",
    "mode",
    "version_count",
    "max_parallel_requests",
    "repeat",
    "elapsed_s",
    "ok",
    "failed",
    "efficiency",
    "ideal_s",
    "wall_over_ideal",
    "serial_source",
    "share_429",
)


def _int_list(flag: str) -> Callable[[str], list[int]]:
    """An argparse type for "1,2,3": whole numbers ≥ 1; the error names the flag."""

    def parse(raw: str) -> list[int]:
        try:
            values = [int(part) for part in raw.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(
                f"{flag} must be whole numbers of 1 or more, comma-separated, got {raw!r}"
            )
        return values

    return parse


def _concurrency_list(raw: str) -> list[int | str]:
    """An argparse type for "1,2,4,auto": whole numbers ≥ 1, or auto."""
    values: list[int | str] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        if part.lower() == "auto":
            values.append("auto")
        elif part.isdigit() and int(part) >= 1:
            values.append(int(part))
        else:
            values = []
            break
    if not values:
        raise argparse.ArgumentTypeError(
            "--concurrency must be whole numbers of 1 or more or auto, comma-separated, "
            f"got {raw!r}"
        )
    return values


def _positive(flag: str, kind: Callable[[str], float | int]) -> Callable[[str], Any]:
    def parse(raw: str) -> float | int:
        try:
            value = kind(raw)
        except ValueError:
            value = -1
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} must be a number above 0, got {raw!r}")
        return value

    return parse


def _fraction(flag: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a number from 0 to 1, got {raw!r}")
        return value

    return parse


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="measure wall time and efficiency against the concurrency limit"
    )
    add_api_flags(
        p,
        offline=("--mock", "run against the built-in mock server"),
        model_default="OPENAI_MODEL_NAME; mock-model with --mock",
    )
    p.add_argument(
        "--versions",
        type=_int_list("--versions"),
        default=[6],
        metavar="N[,N…]",
        help="versions per run, any N ≥ 1 (default 6)",
    )
    p.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1, 2, 3, 6],
        metavar="C[,C…]",
        help="concurrency limits, any C ≥ 1, or auto (default 1,2,3,6)",
    )
    p.add_argument(
        "--repeats",
        type=_positive("--repeats", int),
        default=3,
        metavar="R",
        help="runs per setting (default 3)",
    )
    p.add_argument(
        "--serial-baseline",
        action="store_true",
        help="also measure a serial run per repeat (else serial time is estimated)",
    )
    p.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the unrecorded warm-up run"
    )
    p.add_argument("--prompt", help="the prompt (default: a fixed chapter prompt)")
    p.add_argument("--out", type=Path, metavar="CSV", help="write the per-run frame as CSV")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="save the wall-time/efficiency plot; with auto swept, the limit trace of the "
        "last auto run (and the wall-time plot as PNG-concurrency.png)",
    )
    p.add_argument("--json", action="store_true", help="print the run summaries as JSON")
    mock = p.add_argument_group("mock server (with --mock)")
    mock.add_argument(
        "--mock-ttft",
        type=_positive("--mock-ttft", float),
        default=0.1,
        metavar="S",
        help="time to first token, seconds (default 0.1)",
    )
    mock.add_argument(
        "--mock-tokens-per-s",
        type=_positive("--mock-tokens-per-s", float),
        default=250.0,
        metavar="TPS",
        help="token rate (default 250)",
    )
    mock.add_argument(
        "--mock-output-tokens",
        type=_positive("--mock-output-tokens", int),
        default=100,
        metavar="T",
        help="tokens per reply (default 100)",
    )
    mock.add_argument(
        "--mock-jitter",
        type=_fraction("--mock-jitter"),
        default=0.0,
        metavar="FRACTION",
        help="latency noise, e.g. 0.2 = ±20%% uniform (default 0: every reply as long)",
    )
    mock.add_argument(
        "--mock-process",
        action="store_true",
        help="run the mock in its own process (no shared GIL)",
    )
    add_behaviour_flags(mock, prefix="mock-")
    p.set_defaults(func=run)


@contextmanager
def _llm(args: argparse.Namespace) -> Iterator[tuple[LLMConfig, Callable[[], None] | None]]:
    """The API to measure — the mock (started here, stopped on exit) or a configured one —
    and what to do before each run (reset the mock; nothing for a real API)."""
    if not args.mock:
        config = config_from_args(args)
        if not config.configured:
            raise ConfigError(f"bench needs --mock, --base-url or {args.api_key_env}")
        yield config, None
        return
    from ..mockserver import MockServer
    from ..pacing import RateBudget

    server = MockServer(
        ttft_s=args.mock_ttft,
        tokens_per_s=args.mock_tokens_per_s,
        output_tokens=args.mock_output_tokens,
        jitter=args.mock_jitter,
        process=args.mock_process,
        **behaviour_fields(args, prefix="mock-"),
    )
    with server as base_url:
        config = LLMConfig(base_url=base_url, model=args.model or "mock-model")
        totals = _MockTotals()

        def fresh() -> None:
            totals.add(server.stats(log=False))
            server.reset()
            RateBudget.for_key(config.base_url, config.api_key).clear()

        print(
            "mock server: reset before every run (budgets full, no window open, the "
            "client's budget forgotten), so no run inherits what an earlier one spent",
            file=sys.stderr,
        )
        yield config, fresh
        totals.add(server.stats(log=False))
    print(totals, file=sys.stderr)


class _MockTotals:
    """The mock's counters summed over the resets between runs."""

    def __init__(self) -> None:
        self.requests = self.max_in_flight = self.windows = 0
        self.by_status: dict[str, int] = {}

    def add(self, stats: dict[str, Any]) -> None:
        self.requests += stats["requests"]
        self.max_in_flight = max(self.max_in_flight, stats["max_in_flight"])
        self.windows += stats["windows"]
        for status, count in stats["by_status"].items():
            self.by_status[status] = self.by_status.get(status, 0) + count

    def __str__(self) -> str:
        windows = f", {self.windows} rate-limit windows" if self.windows else ""
        statuses = dict(sorted(self.by_status.items()))
        return (
            f"mock server: {self.requests} requests, statuses {statuses}, "
            f"at most {self.max_in_flight} in flight{windows}"
        )


def summaries(result: SweepResult) -> list[dict[str, Any]]:
    """The ``--json`` list: one dict per run with ``JSON_KEYS`` (missing values → None)."""
    frame = result.runs[list(JSON_KEYS)]
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return records


def _table(result: SweepResult) -> str:
    table = result.table()
    return str(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def _plot(result: SweepResult, path: Path) -> None:
    """The wall-time plot of the fixed limits; with auto swept, the limit trace at ``path``."""
    from ..analysis.plots import plot_concurrency, plot_limit

    runs = result.runs
    fixed = runs[runs["max_parallel_requests"] != "auto"]
    has_auto = len(fixed) < len(runs)
    beside = path.with_name(f"{path.stem}-concurrency{path.suffix}") if has_auto else path
    if (fixed["mode"] == "parallel").any():
        plot_concurrency(fixed).savefig(beside, dpi=110)
        print(f"wall time against the limit: {beside}", file=sys.stderr)
    if has_auto:
        plot_limit(result.recorder.limits_frame()).savefig(path, dpi=110)
        print(f"limit trace of the last auto run: {path}", file=sys.stderr)


def _report(result: SweepResult, args: argparse.Namespace) -> None:
    if args.out is not None:
        result.recorder.to_csv(args.out)
    if args.plot is not None:
        _plot(result, args.plot)
    recommendation = result.recommendation()
    advice = str(recommendation) if recommendation else _NO_RECOMMENDATION
    if args.json:
        print(json.dumps(summaries(result), indent=1))
        print(advice, file=sys.stderr)  # stdout stays pure JSON
    else:
        print(_table(result))
        print(advice)


_NO_RECOMMENDATION = (
    "recommended: none — every fixed limit swept had 5 % or more of its requests answered "
    "429 (try lower limits, or auto)"
)


def run(args: argparse.Namespace) -> int:
    from ..analysis.sweep import DEFAULT_PROMPT, sweep

    with _llm(args) as (llm, fresh):
        result = asyncio.run(
            sweep(
                args.prompt or DEFAULT_PROMPT,
                versions=args.versions,
                concurrency=args.concurrency,
                repeats=args.repeats,
                include_serial=args.serial_baseline,
                llm=llm,
                warmup=args.warmup,
                progress=sys.stderr.isatty(),
                before_run=fresh,
            )
        )
    _report(result, args)
    return 0
