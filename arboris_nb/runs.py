"""Read stored runs back: list them, rebuild a Run, export it, resume what is missing;
and record an editor's decisions on a run (select, notes, evaluate) as they happen.

A retry of a version is stored as its own run (``<run_id>-retry-<id>``) linked to the
version it retries: :func:`list_runs` shows it, :func:`retries_of` finds it, and
:func:`load_run` puts it in ``Run.retries`` (a linked version; the original stays).
Edited versions load with the editor's text (``edited=True``, ``original_content`` =
generated), with their scene notes, and the run with its decisions (``Run.decisions``:
``Run.selection``, ``Run.selected_version`` and ``Run.evaluation`` read them).

Every function takes ``store=`` like the engine does (None = ``ARBORIS_STORE`` or the
default file; a path; an open :class:`~arboris_nb.store.RunStore`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .cache import CacheSpec
from .config import COUNT_RANGE, LLMConfig, WriterSettings
from .decisions import Decision
from .engine import Handlers, LLMArg, generate_versions
from .errors import AllVersionsFailed, ConfigError, StateError
from .limits import Limiter
from .results import Run, Version
from .retry import RetryPolicy
from .store import RunNotFound, RunRecord, RunStore, StoreSpec, store_session
from .versionkeys import linked_versions

if TYPE_CHECKING:
    import pandas as pd

    from .verdict import Evaluation

__all__ = [
    "EXPORT_FORMATS",
    "LIST_COLUMNS",
    "RunNotFound",
    "export_run",
    "list_runs",
    "load_run",
    "missing_versions",
    "record_evaluation",
    "record_notes",
    "record_selection",
    "resume",
    "resume_sync",
    "retries_of",
]

ExportFormat = Literal["json", "csv", "md"]
EXPORT_FORMATS: tuple[str, ...] = ("json", "csv", "md")

#: Columns of :func:`list_runs`, one row per run.
LIST_COLUMNS: dict[str, str] = {
    "run_id": "id of the run",
    "created_at": "when the run started (UTC)",
    "project": "project name given to the run",
    "chapter": "chapter number given to the run",
    "status": "running (or interrupted) | complete | partial | failed",
    "mode": '"parallel" or "serial"',
    "version_count": "N, versions planned",
    "max_parallel_requests": "C, the concurrency limit",
    "model": "model name",
    "ok": "versions stored ok",
    "failed": "versions stored failed",
    "cancelled": "versions stored cancelled",
    "missing": "planned versions with no stored result (never finished)",
    "elapsed_s": "generation wall time, summed over sessions (resumes)",
    "sessions": "1 + the number of times it was resumed",
    "parent_run_id": "for a retry: the run whose version it regenerated (else empty)",
    "parent_index": "for a retry: the version number it regenerated",
}


@contextmanager
def _opened(spec: StoreSpec) -> Iterator[RunStore]:
    with store_session(spec) as store:
        if store is None:
            raise ConfigError(
                "the run store is off (ARBORIS_STORE=off): set ARBORIS_STORE to a file path "
                "or pass store=PATH"
            )
        yield store


def _record(store: RunStore, run_id: str) -> RunRecord:
    record = store.get_run(run_id)
    if record is None:
        raise RunNotFound(f"no run {run_id!r} in the run store {store.path}")
    return record


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def list_runs(
    project: str | None = None, limit: int | None = 50, *, store: StoreSpec = None
) -> pd.DataFrame:
    """Stored runs, newest first, as a DataFrame (columns: ``LIST_COLUMNS``)."""
    with _opened(store) as opened:
        records = opened.list_runs(project=project, limit=limit)
    return _frame(records)


def retries_of(run_id: str, index: int | None = None, *, store: StoreSpec = None) -> pd.DataFrame:
    """The retries of run ``run_id``'s versions (only version ``index``'s if given), oldest
    first, as :func:`list_runs` rows; load one with :func:`load_run`."""
    with _opened(store) as opened:
        _record(opened, run_id)  # an unknown id is an error, not an empty answer
        records = opened.retries_of(run_id, index)
    return _frame(records)


def _frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for r in records:
        row = {name: getattr(r, name, None) for name in LIST_COLUMNS}
        row["created_at"] = pd.Timestamp(r.created_at, unit="s", tz="UTC")
        row["missing"] = r.version_count - sum(r.counts.values())
        rows.append(row)
    return pd.DataFrame(rows, columns=list(LIST_COLUMNS))


def _rebuild(record: RunRecord, stored: Sequence[Version]) -> Run:
    by_index = {v.index: v for v in stored}
    # A planned version with no row never finished (process ended): it stays "queued".
    versions = [by_index.get(i) or Version(index=i) for i in record.indices]
    return Run(
        run_id=record.run_id,
        versions=versions,
        parallel=record.parallel,
        max_parallel_requests=record.max_parallel_requests,
        project=record.project,
        chapter=record.chapter,
        model=record.model,
        created_at=record.created_at,
        elapsed_s=record.elapsed_s,
        parent_run_id=record.parent_run_id,
        parent_index=record.parent_index,
        keep=record.keep,
        extra_versions=record.extra_versions,
    )


def _with_desk(store: RunStore, run: Run) -> Run:
    """``run`` with its stored decisions and retries (each with its versions)."""
    run.decisions = store.decisions(run.run_id)
    run.retries = [
        _rebuild(retry, store.get_versions(retry.run_id)) for retry in store.retries_of(run.run_id)
    ]
    return run


def _load(store: RunStore, record: RunRecord) -> Run:
    return _with_desk(store, _rebuild(record, store.get_versions(record.run_id)))


def load_run(run_id: str, *, store: StoreSpec = None) -> Run:
    """The stored run as a :class:`Run`: its versions (edited text, scene notes; those
    that never finished are ``queued``), its ``decisions`` and its ``retries`` (linked
    runs, oldest first, each with its versions) — what the editor left, to go on with."""
    with _opened(store) as opened:
        return _load(opened, _record(opened, run_id))


# -- decisions --------------------------------------------------------------------------


def _run_id(run: Run | str) -> str:
    return run if isinstance(run, str) else run.run_id


def _target(run: Run | str, index: int, holder: str | None, opened: RunStore | None) -> Version:
    """Version ``index`` of ``run`` (of its retry run ``holder`` if given): from memory
    for a Run, else from the store."""
    if isinstance(run, Run):
        version = run.find_version(holder, index)
    else:
        if opened is None:
            raise ConfigError(
                "the run store is off (ARBORIS_STORE=off): give the Run, not its id, "
                "or set ARBORIS_STORE / pass store=PATH"
            )
        for run_id in (run, holder or run):  # both must exist: RunNotFound names the missing
            _record(opened, run_id)
        stored = opened.get_versions(holder or run)
        version = next((v for v in stored if v.index == index), None)
    if version is None:
        raise ConfigError(f"there is no version {index} in run {holder or _run_id(run)}")
    return version


def _remember(run: Run | str, decision: Decision) -> Decision:
    """Append ``decision`` to ``run.decisions`` when ``run`` is a Run; return it."""
    if isinstance(run, Run):
        run.decisions.append(decision)
    return decision


def record_selection(
    run: Run | str, index: int, *, version_run_id: str | None = None, store: StoreSpec = None
) -> Decision:
    """Record that the editor chose version ``index`` (of the retry run
    ``version_run_id`` if given); ``Run.selection`` is then this choice. Earlier choices
    stay in the history. A version that is not ok is refused (:class:`StateError`).

    ``run`` is a Run (the decision is also appended to ``run.decisions``) or a stored
    run's id. ``store`` as for ``generate_versions``; False records in memory only."""
    decision = Decision.now("select", index, version_run_id=version_run_id)
    with store_session(store) as opened:
        version = _target(run, index, version_run_id, opened)
        if not version.ok:
            raise StateError(
                f"version {index} of run {version_run_id or _run_id(run)} is "
                f"{version.status}: only an ok version can be selected; retry it or "
                "select another"
            )
        if opened is not None:
            opened.save_decision(_run_id(run), decision)
    return _remember(run, decision)


def record_evaluation(
    run: Run | str, evaluation: Evaluation, *, store: StoreSpec = None
) -> Decision:
    """Record an evaluation of ``run`` (``Evaluation.to_dict()``: verdict, context,
    criteria and the judge's requests); ``Run.evaluation`` is then this one."""
    decision = Decision.now("evaluate", data=evaluation.to_dict())
    with store_session(store) as opened:
        if opened is not None:
            opened.save_decision(_run_id(run), decision)
    return _remember(run, decision)


def record_notes(
    run: Run | str,
    index: int,
    notes: str | None,
    *,
    version_run_id: str | None = None,
    store: StoreSpec = None,
) -> Decision:
    """Keep scene notes with version ``index`` (of the retry run ``version_run_id`` if
    given): its ``notes`` column in the store and a "notes" decision; with a Run, also the
    version's ``notes`` and ``run.decisions``. "" or None clears them. A retry of the
    version sends them (:func:`arboris_nb.editor.retry_version`)."""
    text = notes if notes and notes.strip() else None
    data = {"notes": text or ""}
    decision = Decision.now("notes", index, version_run_id=version_run_id, data=data)
    with store_session(store) as opened:
        version = _target(run, index, version_run_id, opened)
        if opened is not None:
            decision = opened.save_notes(version_run_id or _run_id(run), index, text)
    if isinstance(run, Run):
        version.notes = text
    return _remember(run, decision)


def missing_versions(run_id: str, *, store: StoreSpec = None) -> list[int]:
    """Version numbers :func:`resume` would generate: not stored, or stored but not ok."""
    with _opened(store) as opened:
        record = _record(opened, run_id)
        ok = {v.index for v in opened.get_versions(run_id) if v.ok}
    return [i for i in record.indices if i not in ok]


# -- export -----------------------------------------------------------------------------


def _as_json(record: RunRecord, run: Run) -> str:
    head = record.to_dict()
    head["created_at_utc"] = str(_utc(record.created_at))
    document = {
        "run": head,
        "metrics": run.summary(),
        "versions": [v.to_dict(metrics=True) for v in run.versions],
        "selection": _selection_dict(run),
        "decisions": [d.to_dict() for d in run.decisions],
        "retries": [r.to_dict(metrics=True) for r in run.retries],
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def _selection_dict(run: Run) -> dict[str, Any] | None:
    if run.selection is None:
        return None
    run_id, index = run.selection
    version = run.selected_version
    return {"run_id": run_id, "index": index, "edited": bool(version and version.edited)}


def _as_csv(run: Run) -> str:
    """The run's versions and, right after each, its linked retries (a retry's row has
    the retry run's ``run_id`` and ``retry_of`` = the version it retries; else empty)."""
    import pandas as pd

    holders = {id(v): (run, pos) for pos, v in enumerate(run.versions)}
    holders |= {id(s.versions[0]): (s, 0) for s in run.retries if s.versions}
    frames = {id(holder): holder.to_frame() for holder, _ in holders.values()}
    rows = []
    for key, v in linked_versions(run):
        holder, pos = holders[id(v)]
        parent = key[0] if isinstance(key, tuple) else None
        extra = {"title": v.title, "content": v.content, "notes": v.notes, "retry_of": parent}
        rows.append(frames[id(holder)].iloc[[pos]].assign(**extra))
    empty = run.to_frame().assign(title=None, content=None, notes=None, retry_of=None)
    frame = pd.concat(rows, ignore_index=True) if rows else empty
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return buffer.getvalue()


def _retry_line(record: RunRecord) -> list[str]:
    if record.parent_run_id is None:
        return []
    return [f"- retry of run {record.parent_run_id}, version {record.parent_index}"]


def _version_label(run: Run, run_id: str, index: int) -> str:
    """ "version 2", or "version 2 (retry run <id>)" for a retry's version."""
    return f"version {index}" + ("" if run_id == run.run_id else f" (retry run {run_id})")


def _version_md(v: Version, heading: str) -> list[str]:
    title = f" — {v.title}" if v.title else ""
    notes = (", from cache" if v.cached else "") + (", edited" if v.edited else "")
    lines = [f"## {heading}{title} ({v.status}{notes})", ""]
    if v.summary:
        lines += [f"> {v.summary}", ""]
    if v.notes:
        lines += [f"Scene notes: {v.notes}", ""]
    return [*lines, v.display_text() or "(no result stored)", ""]


def _versions_md(run: Run, all_versions: bool) -> list[str]:
    """The selected version (default), else every version with the retries."""
    selected = run.selected_version
    if selected is not None and not all_versions:
        run_id, index = run.selection or (run.run_id, selected.index)
        label = _version_label(run, run_id, index)
        edited = ", edited" if selected.edited else ""
        return [f"Selected: {label}{edited}.", "", *_version_md(selected, f"Selected {label}")]
    head = [] if selected is not None else ["No version selected: all versions follow.", ""]
    lines = [line for v in run.versions for line in _version_md(v, f"Version {v.index}")]
    for retry in run.retries:
        for v in retry.versions:
            lines += _version_md(v, f"Retry of version {v.index} (run {retry.run_id})")
    return head + lines


def _as_markdown(record: RunRecord, run: Run, all_versions: bool = False) -> str:
    created = _utc(record.created_at)
    elapsed = "-" if record.elapsed_s is None else f"{record.elapsed_s:.2f} s"
    lines = [
        f"# Run {record.run_id}",
        "",
        f"- project: {record.project or '-'} · chapter: {record.chapter or '-'}",
        f"- model: {record.model or '-'} · mode: {record.mode} · "
        f"N = {record.version_count} · C = {record.max_parallel_requests}",
        f"- status: {record.status} · created: {created:%Y-%m-%d %H:%M:%S} UTC"
        f" · elapsed: {elapsed}",
        *_retry_line(record),
        "",
        "## Prompt",
        "",
    ]
    for message in record.messages:
        lines += [
            f"**{message.get('role', '?')}**",
            "",
            "```text",
            message.get("content", ""),
            "```",
            "",
        ]
    return "\n".join(lines + _versions_md(run, all_versions))


def export_run(
    run_id: str,
    format: ExportFormat = "json",
    path: str | Path | None = None,
    *,
    all_versions: bool = False,
    store: StoreSpec = None,
) -> str:
    """A stored run as JSON (everything: attempt logs, the selection, decisions and
    retries), CSV (one row per version, the ``Run.to_frame`` columns plus title, content,
    notes and retry_of: each linked retry is a row right after the version it retries,
    with its own run_id and ``retry_of`` = that version's number) or Markdown (for
    reading).

    Markdown holds the run's head and the selected version — its edited text if it was
    edited, saying which version it is and that it was edited; ``all_versions=True`` (or
    no selection, which it says) puts every version and every retry instead.
    Returns the text; also writes it to ``path`` when given.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    with _opened(store) as opened:
        record = _record(opened, run_id)
        run = _load(opened, record)
    if format == "json":
        text = _as_json(record, run)
    elif format == "csv":
        text = _as_csv(run)
    else:
        text = _as_markdown(record, run, all_versions)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


# -- resume -----------------------------------------------------------------------------


def _resume_settings(record: RunRecord, todo: Sequence[int]) -> WriterSettings:
    return WriterSettings(
        version_count=min(max(len(todo), COUNT_RANGE[0]), COUNT_RANGE[1]),
        parallel=record.parallel,
        max_parallel_requests=record.max_parallel_requests,  # type: ignore[arg-type]
    )


def _resume_llm(record: RunRecord) -> LLMConfig:
    """The environment's API, with the stored run's model and sampling parameters."""
    return LLMConfig.from_env(
        model=record.model, temperature=record.temperature, max_tokens=record.max_tokens
    )


async def resume(
    run_id: str,
    *,
    llm: LLMArg = None,
    settings: WriterSettings | None = None,
    on_event: Handlers = None,
    store: StoreSpec = None,
    retry: RetryPolicy | None = None,
    limiter: Limiter | None = None,
    cache: CacheSpec = None,
    raise_on_all_failed: bool = True,
) -> Run:
    """Finish a stored run: generate only the versions that are missing or not ok.

    The stored messages and the same ``run_id`` are used; stored ``ok`` versions are kept
    as they are and never requested again. Returns the merged Run (stored ok versions +
    this session's), whose ``elapsed_s`` is the generation time summed over sessions.
    ``llm=None`` uses the environment's API with the stored model and parameters;
    ``settings=None`` the stored mode and concurrency limit.
    """
    with _opened(store) as opened:
        record = _record(opened, run_id)
        stored = opened.get_versions(run_id)
        kept = [v for v in stored if v.ok and v.index in record.indices]
        todo = [i for i in record.indices if i not in {v.index for v in kept}]
        if not todo:
            return _with_desk(opened, _rebuild(record, kept))
        session = await generate_versions(
            record.messages,
            settings=settings or _resume_settings(record, todo),
            llm=llm if llm is not None else _resume_llm(record),
            project=record.project,
            chapter=record.chapter,
            on_event=on_event,
            retry=retry,
            limiter=limiter,
            indices=todo,
            run_id=run_id,
            raise_on_all_failed=False,
            store=opened,
            cache=cache,
        )
        notes = {v.index: v.notes for v in stored if v.notes}  # the store kept them
        for version in session.versions:
            version.notes = notes.get(version.index)
        merged = _with_desk(opened, _rebuild(record, [*kept, *session.versions]))
    merged.elapsed_s = (record.elapsed_s or 0.0) + (session.elapsed_s or 0.0)
    if raise_on_all_failed and all(v.status == "failed" for v in merged.versions):
        raise AllVersionsFailed(merged)
    return merged


def resume_sync(run_id: str, **kwargs: Any) -> Run:
    """Blocking :func:`resume`; inside a running loop it uses a worker thread."""
    from ._sync import run_sync

    return run_sync(resume(run_id, **kwargs))
