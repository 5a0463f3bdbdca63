"""``arboris-nb runs``: list, show, export and resume stored runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ._api import add_api_flags, api_flags_given, llm_from_args, simulated_from_args

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("runs", help="list, show, export or resume stored runs")
    p.add_argument(
        "--store", type=Path, metavar="PATH", help="the run store file (default: ARBORIS_STORE)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="stored runs, newest first")
    listing.add_argument("--project", help="only this project's runs")
    listing.add_argument("--limit", type=_positive("--limit"), default=20, help="default 20")
    listing.add_argument("--json", action="store_true", help="print a JSON list")

    show = actions.add_parser(
        "show", help="one run: its versions, metrics, selection, evaluation and retries"
    )
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true", help="print the full JSON export")

    export = actions.add_parser("export", help="write a run as json, csv or md")
    export.add_argument("run_id")
    export.add_argument("--format", choices=("json", "csv", "md"), default="json")
    export.add_argument("--out", type=Path, metavar="PATH", help="file to write (default: stdout)")
    export.add_argument(
        "--all",
        action="store_true",
        dest="all_versions",
        help="md: every version and retry (default: the selected version, edited text)",
    )

    resume = actions.add_parser("resume", help="generate the versions a run is missing")
    resume.add_argument("run_id")
    add_api_flags(resume, model_default="the stored run's model", pool=True)
    resume.add_argument("--json", action="store_true", help="print the merged run as JSON")
    p.set_defaults(func=run)


def _positive(flag: str) -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number of 1 or more")
        return value

    return parse


def _plain(value: Any) -> Any:
    """JSON-safe cell: NaN → None, timestamps → ISO text."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _list(args: argparse.Namespace) -> int:
    from ..runs import list_runs

    frame = list_runs(project=args.project, limit=args.limit, store=args.store)
    if args.json:
        rows = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif frame.empty:
        print("no stored runs")
    else:
        frame["created_at"] = frame["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
        columns = ["run_id", "created_at", "project", "chapter", "status", "ok", "version_count",
                   "model", "elapsed_s"]  # fmt: skip
        print(frame[columns].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..console import format_summary
    from ..runs import export_run, load_run

    if args.json:
        print(export_run(args.run_id, "json", store=args.store))
        return 0
    run = load_run(args.run_id, store=args.store)
    from ..versionkeys import linked_versions, spoken

    holders = {id(r.versions[0]): r.run_id for r in run.retries if r.versions}
    for key, v in linked_versions(run):  # each retry right after the version it retries
        where = f", run {holders[id(v)]}" if isinstance(key, tuple) else ""
        _print_version(spoken(key) + where, v)
    print(format_summary(run))
    for line in _desk_lines(run):
        print(line)
    return 0


def _print_version(heading: str, v: Any) -> None:
    label = "cached" if v.cached else f"{v.attempt_count} attempt(s)"
    edited = ", edited" if v.edited else ""
    print(f"--- {heading} ({v.status}, {label}{edited}) ---")
    if v.notes:
        print(f"[scene notes: {v.notes}]")
    print(v.display_text() or "(no result stored)")
    print()


def _desk_lines(run: Any) -> list[str]:
    """The editor's state of ``run``: the selection, the last evaluation, the retries."""
    lines = [f"selection: {_selection_text(run)}"]
    evaluation = run.evaluation
    if evaluation is None:
        lines.append("evaluation: none")
    else:
        lines.append(f"evaluation: {_evaluation_text(evaluation)}")
    lines.append(f"retries: {len(run.retries) or 'none'}")
    for retry in run.retries:
        outcome = ", ".join(
            f"{v.status}" + (" (edited)" if v.edited else "") for v in retry.versions
        )
        lines.append(f"  {retry.run_id}: retry of version {retry.parent_index}: {outcome}")
    return lines


def _selection_text(run: Any) -> str:
    if run.selection is None:
        return "none"
    run_id, index = run.selection
    where = "" if run_id == run.run_id else f" of retry run {run_id}"
    version = run.selected_version
    edited = ", edited" if version is not None and version.edited else ""
    return f"version {index}{where}{edited}"


def _evaluation_text(evaluation: Any) -> str:
    from ..versionkeys import key_order, key_text, spoken

    parts = [f"best {spoken(evaluation.best_choice)}", f"mode {evaluation.mode}"]
    if evaluation.wins:
        total = 2 * (len(evaluation.wins) - 1)
        shown = sorted(evaluation.wins.items(), key=lambda kw: key_order(kw[0]))
        wins = ", ".join(f"v{key_text(i)} {w:g}/{total}" for i, w in shown)
        parts.append(f"wins {wins}")
    if len(evaluation.ranking) > 1:
        parts.append("ranking " + " > ".join(f"v{key_text(i)}" for i in evaluation.ranking))
    if evaluation.agreement is not None:
        parts.append(f"agreement {evaluation.agreement:.0%}")
    return " · ".join(parts) + f" — {evaluation.reason}"


def _export(args: argparse.Namespace) -> int:
    from ..runs import export_run

    text = export_run(
        args.run_id, args.format, args.out, all_versions=args.all_versions, store=args.store
    )
    if args.out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _resume(args: argparse.Namespace) -> int:
    import asyncio

    from ..console import ProgressPrinter, format_summary
    from ..errors import AllVersionsFailed
    from ..runs import missing_versions, resume
    from .generate import EXIT_ALL_FAILED, run_json

    todo = missing_versions(args.run_id, store=args.store)
    print(f"run {args.run_id}: versions to generate: {todo or 'none'}", file=sys.stderr)
    llm: Any = None  # the environment's API with the stored run's model
    if args.simulated:
        llm = simulated_from_args(args)
    elif api_flags_given(args):
        llm = llm_from_args(args)
    try:
        merged = asyncio.run(
            resume(args.run_id, llm=llm, store=args.store, on_event=ProgressPrinter())
        )
    except AllVersionsFailed as exc:
        print(f"arboris-nb: {exc}", file=sys.stderr)
        return EXIT_ALL_FAILED
    if args.json:
        print(json.dumps(run_json(merged), ensure_ascii=False, indent=2))
    else:
        print(format_summary(merged))
    return 0


_ACTIONS = {"list": _list, "show": _show, "export": _export, "resume": _resume}


def run(args: argparse.Namespace) -> int:
    return _ACTIONS[args.action](args)
