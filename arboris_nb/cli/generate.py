"""``arboris-nb generate``: N versions of one prompt, from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import FANOUTS, WriterSettings, parse_count, parse_extra, parse_fanout, parse_limit
from ..console import ProgressPrinter, format_summary
from ..engine import LLMArg, start_versions
from ..errors import AllVersionsFailed, ConfigError
from ..handle import RunHandle
from ..results import Run
from ._api import add_api_flags, llm_from_args, simulated_from_args

__all__ = ["register", "run"]

EXIT_ALL_FAILED = 3
EXIT_INTERRUPTED = 130


def _arg_type(parse: Callable[[str, str, object], object], flag: str, env: str) -> Any:
    """An argparse type from a config parser: its error names the flag, env var and range."""

    def convert(raw: str) -> object:
        try:
            return parse(flag, env, raw)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def count_arg(flag: str, env: str) -> Any:
    """An argparse type for a 1–10 count."""
    return _arg_type(parse_count, flag, env)


def limit_arg() -> Any:
    """``--max-parallel``: a 1–10 count or ``auto`` (adaptive, see docs/reliability.md)."""
    return _arg_type(parse_limit, "--max-parallel", "WRITER_MAX_PARALLEL_REQUESTS")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate N versions of a prompt")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    p.add_argument(
        "--versions",
        type=count_arg("--versions", "WRITER_CHAPTER_VERSION_COUNT"),
        help="versions to generate, 1–10 (default: WRITER_CHAPTER_VERSION_COUNT or 2)",
    )
    p.add_argument(
        "--max-parallel",
        type=limit_arg(),
        help='requests at once, 1–10, or "auto" for adaptive concurrency '
        "(default: WRITER_MAX_PARALLEL_REQUESTS or 3)",
    )
    p.add_argument(
        "--extra-versions",
        type=_arg_type(parse_extra, "--extra-versions", "WRITER_EXTRA_VERSIONS"),
        help="start this many more, 0–5, and keep the first --versions to finish "
        "(default: WRITER_EXTRA_VERSIONS or 0)",
    )
    p.add_argument(
        "--fanout",
        type=_arg_type(parse_fanout, "--fanout", "WRITER_FANOUT"),
        metavar="|".join(reversed(FANOUTS)),
        help='"requests": one request per version; "n": one request asking for N choices, '
        "the prompt billed once (default: WRITER_FANOUT or requests)",
    )
    p.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="TOML or JSON price file, model → price_in/price_out/price_cached_in in USD "
        "per million tokens (default: ARBORIS_PRICES; no file: no cost)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--serial", dest="parallel", action="store_false", default=None)
    mode.add_argument("--parallel", dest="parallel", action="store_true")
    add_api_flags(p, pool=True)
    p.add_argument("--project", help="project name, for logs and the run record")
    p.add_argument("--chapter", type=int, help="chapter number, for logs and the run record")
    p.add_argument("--out", type=Path, metavar="DIR", help="write one file per version here")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return str(args.prompt)
    try:
        return str(args.prompt_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--prompt-file {args.prompt_file}: {exc.strerror}") from None


def _backend(args: argparse.Namespace) -> LLMArg:
    if args.simulated:
        return simulated_from_args(args)
    llm = llm_from_args(args)
    if not (llm[0] if isinstance(llm, list) else llm).configured:
        print(
            "arboris-nb: no OPENAI_API_KEY or OPENAI_API_BASE_URL set; "
            "using the offline simulated model",
            file=sys.stderr,
        )
        return simulated_from_args(args)
    return llm


def run_json(run: Run) -> dict[str, Any]:
    """The ``--json`` object: ``Run.to_dict(metrics=True)``. A contract: it always has
    run_id, project, chapter, mode, version_count, max_parallel_requests, elapsed_s, ok,
    failed, input_tokens, output_tokens and cost (billed, every attempt; null when
    unknown) and versions, each with index, status, content, error, queue_wait_s, ttft_s,
    duration_s, input_tokens, output_tokens, cost, attempt_count and attempts (the list
    of each request made, as ``Attempt.to_dict()``), and every other Version field."""
    return run.to_dict(metrics=True)


def _write_versions(run: Run, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for v in run.ok:
        (out / f"version-{v.index}.md").write_text(v.content or "", encoding="utf-8")


def _report(run: Run, args: argparse.Namespace) -> None:
    if args.out is not None:
        _write_versions(run, args.out)
    if args.json:
        print(json.dumps(run_json(run), ensure_ascii=False, indent=2))
    else:
        for v in run.versions:
            print(f"--- version {v.index} ({v.status}) ---\n{v.display_text()}\n")
        print(format_summary(run))


def run(args: argparse.Namespace) -> int:
    settings = WriterSettings.from_env(
        version_count=args.versions,
        parallel=args.parallel,
        max_parallel_requests=args.max_parallel,
        fanout=args.fanout,
        extra_versions=args.extra_versions,
    )
    prompt, backend = _prompt(args), _backend(args)
    started: list[RunHandle] = []  # so Ctrl-C can still show what finished

    async def generate() -> Run:
        handle = start_versions(
            prompt,
            settings=settings,
            llm=backend,
            project=args.project,
            chapter=args.chapter,
            on_event=ProgressPrinter(),
            prices=args.prices,
        )
        started.append(handle)
        return await handle

    try:
        result = asyncio.run(generate())
    except AllVersionsFailed as exc:
        _report(exc.run, args)
        print(f"arboris-nb: {exc}", file=sys.stderr)
        return EXIT_ALL_FAILED
    except KeyboardInterrupt:
        if started:
            _report(started[0].run, args)
        print("arboris-nb: interrupted; finished versions are shown above", file=sys.stderr)
        return EXIT_INTERRUPTED
    _report(result, args)
    return 0
