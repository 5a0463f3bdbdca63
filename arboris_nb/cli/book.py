"""``arboris-nb book``: submit, watch, resume and export whole-book jobs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._api import add_api_flags, config_from_args, simulated_from_args

__all__ = ["register", "run"]

EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("book", help="generate versions of every chapter of a book")
    actions = p.add_subparsers(dest="book_command", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="plan a job and run it (or queue it)")
    submit.add_argument("--project", help="project name")
    submit.add_argument("--chapters", required=True, help="e.g. 1-10 or 1,3,5-7")
    submit.add_argument("--versions", type=int, default=3, help="versions per chapter, 1–10")
    submit.add_argument("--limit", type=int, default=2, help="requests at once, whole job")
    submit.add_argument("--backend", choices=("local", "celery"), default="local")
    submit.add_argument(
        "--prompt-template",
        default="Write chapter {chapter} of the novel.",
        help="prompt with {chapter} in it (default: %(default)r)",
    )
    submit.add_argument("--job-id", help="id for the job (default: generated)")
    add_api_flags(submit)
    submit.add_argument(
        "--no-wait", action="store_true", help="celery: queue the tasks and return at once"
    )
    for name, text in (("status", "show a job's progress"), ("resume", "run what is left")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("job_id")
        sub.add_argument("--json", action="store_true", help="print JSON")
    export = actions.add_parser("export", help="write ok versions as Markdown files")
    export.add_argument("job_id")
    export.add_argument("--out", type=Path, default=Path("book"), metavar="DIR")
    p.set_defaults(func=run)


def _llm(args: argparse.Namespace) -> Any:
    if args.simulated:
        return simulated_from_args(args)
    config = config_from_args(args)
    if not config.configured:
        raise ConfigError(
            "no model: pass --simulated or --base-url, or set OPENAI_API_KEY / OPENAI_API_BASE_URL"
        )
    return config


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    from ..widgets.book import format_seconds

    print(
        f"{status['job_id']} ({status['backend']}): chapters {status['chapters_done']}/"
        f"{status['chapters']}, versions {status['ok']}/{status['units']} ok, "
        f"{status['failed']} failed, {status['running']} running (limit {status['limit']}), "
        f"{status['queued']} waiting for a slot, {status['pending'] + status['cancelled']} to do; "
        f"{status['requests']} requests; elapsed {format_seconds(status['elapsed_s'])}"
    )


def _drive(job: Any, as_json: bool) -> int:
    try:
        status = asyncio.run(job.run())
    except KeyboardInterrupt:
        print("arboris-nb: interrupted; finished versions are kept (book resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_status(status, as_json)
    return 0 if status["ok"] == status["units"] else EXIT_INCOMPLETE


def _submit(args: argparse.Namespace) -> int:
    from ..queue.job import BookJob

    if args.no_wait and args.backend != "celery":
        raise ConfigError("--no-wait is for --backend celery (a local job runs in this process)")

    job = BookJob(
        args.project,
        chapters=args.chapters,
        versions_per_chapter=args.versions,
        prompts=args.prompt_template,
        llm=_llm(args),
        limit=args.limit,
        backend=args.backend,
        job_id=args.job_id,
        api_key_env=args.api_key_env,
    )
    print(job.job_id)
    if args.no_wait:
        job.submit()
        return 0
    return _drive(job, as_json=False)


def run(args: argparse.Namespace) -> int:
    from ..queue.job import BookJob

    if args.book_command == "submit":
        return _submit(args)
    job = BookJob.load(args.job_id)
    if args.book_command == "status":
        _print_status(job.status(), args.json)
        return 0
    if args.book_command == "resume":
        return _drive(job, args.json)
    paths = job.export(args.out)
    print(f"wrote {len(paths)} file(s) under {args.out}")
    return 0
