"""Editor actions on a finished run, as plain functions (the widget only calls them).

* :func:`retry_version` — regenerate one version, optionally with an extra instruction
  and the version's scene notes (as Arboris-Novel's retry-version sends its custom
  prompt), through the engine; the new version is a linked version (``run.retries``),
  stored as a run of its own linked to the one it retries: the original stays.
* :func:`edit_version` — replace a version's text by the editor's, saved to the run
  store next to the generated text (which is kept), each edit also a decision.
* :func:`word_diff` / :func:`diff_html` — an inline diff, by words in English and by
  characters in Chinese (:func:`~arboris_nb.textdiff.text_diff`).
* :func:`export_markdown` — one version to a Markdown file.

Evaluate (asking a judge model which version is best) lives in :mod:`arboris_nb.judge`;
its names are re-exported here, so every editor action is in one namespace.
Everything that becomes HTML here is escaped: model output is untrusted.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from pathlib import Path

from .backends.base import Backend, Message
from .config import LLMConfig, WriterSettings
from .decisions import Decision
from .engine import Handlers, start_versions
from .errors import ConfigError, StateError
from .judge import evaluate, evaluation_candidates
from .judge_prompts import EVALUATION_SYSTEM_PROMPT, evaluation_messages, parse_evaluation
from .judge_sim import simulated_judge
from .prompts import ChapterContext, as_messages
from .results import Run, Version
from .retry import RetryPolicy
from .store import RunStore, StoreSpec, store_session
from .textdiff import text_diff
from .verdict import Evaluation, EvaluationError

__all__ = [
    "EVALUATION_SYSTEM_PROMPT",
    "Evaluation",
    "EvaluationError",
    "diff_html",
    "edit_version",
    "evaluate",
    "evaluation_candidates",
    "evaluation_messages",
    "export_markdown",
    "parse_evaluation",
    "retry_messages",
    "retry_run_id",
    "retry_version",
    "simulated_judge",
    "word_diff",
]

LLM = LLMConfig | Backend | None


def _not_ok(version: Version, done_to_it: str) -> StateError:
    """The error for acting on a version that is not done (failed, cancelled, running)."""
    return StateError(
        f"version {version.index} is {version.status}: only a done version can be "
        f"{done_to_it}; retry it (or wait for it) first"
    )


# -- retry ------------------------------------------------------------------------------
def retry_messages(
    prompt: str | Sequence[Message], instruction: str | None = None, notes: str | None = None
) -> list[Message]:
    """The original messages with the scene ``notes`` in the last user message's writing
    notes, plus one user message carrying ``instruction`` if given.

    Arboris-Novel's retry-version rebuilds the chapter request with its custom prompt as
    the chapter's writing requirements; here the request is the stored messages, so the
    notes go where :func:`~arboris_nb.prompts.chapter_messages` puts writing notes: the
    ``[Writing notes]`` section, added to the end of the request (after the notes already
    there, which is that section when the request was built by ``chapter_messages``).
    """
    messages = as_messages(prompt)
    if notes and notes.strip():
        _add_notes(messages, notes.strip())
    if instruction and instruction.strip():
        messages.append({"role": "user", "content": instruction.strip()})
    return messages


def _add_notes(messages: list[Message], notes: str) -> None:
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        messages.append({"role": "user", "content": ChapterContext(notes=notes).text()})
        return
    last = users[-1]
    text = str(last["content"]).rstrip()
    written = ChapterContext.from_prompt(text).notes
    if written and text.endswith(written):  # the request ends in its writing notes
        last["content"] = f"{text}\n{notes}"
    else:
        last["content"] = f"{text}\n\n{ChapterContext(notes=notes).text()}"


def _position(run: Run, index: int) -> int:
    for pos, version in enumerate(run.versions):
        if version.index == index:
            return pos
    have = ", ".join(str(v.index) for v in run.versions)
    raise ConfigError(f"version {index} is not in run {run.run_id} (versions: {have})")


def retry_run_id(run_id: str) -> str:
    """A new id for a retry of a version of ``run_id``: ``<run_id>-retry-<12 hex>``."""
    return f"{run_id}-retry-{uuid.uuid4().hex[:12]}"


async def retry_version(
    run: Run,
    index: int,
    prompt: str | Sequence[Message],
    *,
    instruction: str | None = None,
    notes: str | None = None,
    llm: LLM = None,
    settings: WriterSettings | None = None,
    retry: RetryPolicy | None = None,
    on_event: Handlers = None,
    store: StoreSpec = None,
) -> Version:
    """Regenerate version ``index`` of ``run`` as a new, linked version; return it.

    The engine runs ``indices=[index]`` under a new run id (:func:`retry_run_id`), so the
    retry is stored as a run of its own — its messages are the original with the scene
    notes and the instruction (:func:`retry_messages`) — whose row names the run and
    version it retries (``parent_run_id``, ``parent_index``; see
    ``arboris_nb.runs.retries_of``). ``notes`` default to the version's ``notes``
    (``notes=""`` sends none).

    Nothing is replaced: the retry run is appended to ``run.retries`` (whatever its
    outcome, as the store keeps it) and ``run.versions`` keeps the original, so an editor
    chooses between them (``record_selection(run, index, version_run_id=…)``). Unlike
    Arboris-Novel, which overwrites the version it retries. Its timings are offsets from
    the retry's own start. ``store`` is as for ``generate_versions``.
    """
    original = run.versions[_position(run, index)]
    notes = original.notes if notes is None else notes
    with store_session(store) as opened:
        handle = start_versions(
            retry_messages(prompt, instruction, notes),
            settings=settings or WriterSettings(version_count=1),
            llm=llm,
            project=run.project,
            chapter=run.chapter,
            on_event=on_event,
            retry=retry,
            indices=[index],
            run_id=retry_run_id(run.run_id),
            raise_on_all_failed=False,
            store=opened if opened is not None else False,
            refresh=True,  # a retry must ask the model again, never replay the reply cache
        )
        # Set before the run starts, so the store writes the link with the run's row.
        handle.run.parent_run_id, handle.run.parent_index = run.run_id, index
        sub = await handle
    run.retries.append(sub)
    return sub.versions[0]


# -- edit -------------------------------------------------------------------------------
def edit_version(
    version: Version, text: str, *, run: Run | None = None, store: StoreSpec = None
) -> Version:
    """Replace an ok version's content with edited text (refused for failed/cancelled).

    The generated text is kept in ``version.original_content``. With ``run`` (the Run
    holding ``version``) the edit is also saved to the run store, next to the generated
    text, which stays (``load_run`` then returns the edited text, ``edited=True``).
    ``store``: None = ``ARBORIS_STORE`` or the default file, like the engine; a path or a
    ``RunStore``; False = memory only. The stored row is the one that holds this
    version's generated text — the run's own, or a retry of it; an edit that cannot be
    saved (not stored) raises :class:`ConfigError` and leaves the version unchanged.
    """
    if not version.ok:
        raise _not_ok(version, "edited")
    if not text.strip():
        raise ConfigError("edited text must not be empty")
    generated = _generated(version)
    if run is not None:
        holder = _holder(run, version)
        decision = _save_edit(run, version.index, generated, text, store, holder)
        if decision is None:  # memory only: the same decision the store would record
            linked = holder if holder != run.run_id else None
            data = {"text": text}
            decision = Decision.now("edit", version.index, version_run_id=linked, data=data)
        run.decisions.append(decision)
    version.original_content = generated
    version.content = text
    version.edited = True
    return version


def _holder(run: Run, version: Version) -> str | None:
    """The id of the run holding ``version``: ``run``'s, or a retry's in ``run.retries``
    (None: not found by identity; the store is then searched by text)."""
    for holder in (run, *run.retries):
        if any(v is version for v in holder.versions):
            return holder.run_id
    return None


def _save_edit(
    run: Run,
    index: int,
    generated: str | None,
    text: str,
    store: StoreSpec,
    holder: str | None,
) -> Decision | None:
    """Save the edit to the row holding the version; the store's "edit" decision, or
    None when the store is off (ARBORIS_STORE=off, store=False: nothing is saved)."""
    with store_session(store) as opened:
        if opened is None:
            return None
        run_id = holder or _stored_run_id(opened, run.run_id, index, generated)
        if opened.get_run(run_id) is None:
            raise _not_stored(opened, run.run_id, index)
        return opened.save_edit(run_id, index, text)


def _stored_run_id(store: RunStore, run_id: str, index: int, generated: str | None) -> str:
    """The run whose stored version ``index`` has this generated text: after a retry
    the version shown is the retry's (newest first), else the run's own."""
    newest_first = [r.run_id for r in reversed(store.retries_of(run_id, index))]
    for candidate in [*newest_first, run_id]:
        for stored in store.get_versions(candidate):
            if stored.index == index and _generated(stored) == generated:
                return candidate
    raise _not_stored(store, run_id, index)


def _not_stored(store: RunStore, run_id: str, index: int) -> ConfigError:
    return ConfigError(
        f"version {index} of run {run_id} is not in the run store {store.path}, so the "
        "edit cannot be saved; pass store=False to edit in memory only"
    )


def _generated(version: Version) -> str | None:
    return version.original_content if version.edited else version.content


# -- diff -------------------------------------------------------------------------------
word_diff = text_diff  # the editor's name for it; English by words, Chinese by characters


def diff_html(a: str, b: str) -> str:
    """An inline diff: deletions in ``<del>``, insertions in ``<ins>``, all text escaped."""
    tags = {"equal": "{}", "delete": "<del>{}</del>", "insert": "<ins>{}</ins>"}
    body = "".join(tags[op].format(html.escape(text)) for op, text in word_diff(a, b))
    return f'<div class="arboris-diff" style="white-space: pre-wrap">{body}</div>'


# -- export -----------------------------------------------------------------------------
def export_markdown(
    version: Version,
    path: str | Path,
    *,
    run: Run | None = None,
    title: str | None = None,
) -> Path:
    """Write an ok version to ``path`` as Markdown (a heading, then the text); return it.

    A comment under the heading names the run and version, and says when it was edited."""
    if not version.ok or version.content is None:
        raise _not_ok(version, "exported")
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"export path {target} is a directory; give a file name")
    heading = title or version.title or _default_title(version, run)
    notes = [f"arboris run {run.run_id}, version {version.index}"] if run else []
    notes += ["edited"] if version.edited else []
    note = f"<!-- {', '.join(notes)} -->\n\n" if notes else ""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# {heading}\n\n{note}{version.content.strip()}\n", encoding="utf-8")
    return target


def _default_title(version: Version, run: Run | None) -> str:
    chapter = f"Chapter {run.chapter} — " if run and run.chapter is not None else ""
    return f"{chapter}Version {version.index}"
