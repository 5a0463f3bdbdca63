"""Editor actions on a finished run, as plain functions (the widget only calls them).

* :func:`retry_version` — regenerate one version, optionally with an extra instruction
  (Arboris-Novel's retry-version: the original messages plus one user message), through
  the engine; the new version replaces the old one in the run in memory, and is stored as
  a run of its own linked to the one it retries, so the store keeps both texts.
* :func:`edit_version` — replace a version's text by the editor's, saved to the run
  store next to the generated text (which is kept).
* :func:`word_diff` / :func:`diff_html` — an inline diff, by words in English and by
  characters in Chinese (:func:`~arboris_nb.textdiff.text_diff`).
* :func:`evaluate` — ask the model to compare the ok versions; the reply is parsed into
  Arboris-Novel's evaluation shape (:class:`Evaluation`) by :func:`parse_evaluation`.
  :func:`simulated_judge` is an offline model that writes chapters *and* answers
  evaluation requests with deterministic JSON, so Evaluate works without an API.
* :func:`export_markdown` — one version to a Markdown file.

Everything that becomes HTML here is escaped: model output is untrusted.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import Backend, ChatRequest, Message
from .backends.simulated import SimulatedLLM, simulated_text
from .config import LLMConfig, WriterSettings
from .engine import Handlers, generate_versions
from .errors import ArborisError, ConfigError
from .events import Event, EventHandler, RunStarted
from .prompts import as_messages, strip_think
from .results import Run, Version
from .retry import RetryPolicy
from .store import RunStore, StoreSpec, open_store
from .textdiff import text_diff

__all__ = [
    "EVALUATION_SYSTEM_PROMPT",
    "Evaluation",
    "EvaluationError",
    "diff_html",
    "edit_version",
    "evaluate",
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

EVALUATION_SYSTEM_PROMPT = (
    "You are a senior fiction editor. Compare the candidate versions of one chapter for "
    "prose, pacing, character consistency and fidelity to the chapter goal. Reply with JSON "
    'only: {"best_choice": <version number>, "reason_for_choice": "...", "evaluation": '
    '{"version1": {"pros": ["..."], "cons": ["..."], "overall_review": "..."}, ...}}'
)
# The judge finds the versions by these headings; keep them in one place.
_VERSION_HEADING = "[Version {index}]"
_HEADING_RE = re.compile(r"^\[Version (\d+)\]$", re.MULTILINE)


class EvaluationError(ArborisError):
    """The model's evaluation reply could not be parsed; ``reply`` holds it."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


# -- retry ------------------------------------------------------------------------------
def retry_messages(
    prompt: str | Sequence[Message], instruction: str | None = None
) -> list[Message]:
    """The original messages, plus one user message carrying ``instruction`` if given."""
    messages = as_messages(prompt)
    if instruction and instruction.strip():
        messages.append({"role": "user", "content": instruction.strip()})
    return messages


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
    llm: LLM = None,
    settings: WriterSettings | None = None,
    retry: RetryPolicy | None = None,
    on_event: Handlers = None,
    store: StoreSpec = None,
) -> Version:
    """Regenerate version ``index`` of ``run`` and put the new one in its place.

    The engine runs ``indices=[index]`` under a new run id (:func:`retry_run_id`), so the
    retry is stored as a run of its own — its messages are the original plus the
    instruction — whose row names the run and version it retries (``parent_run_id``,
    ``parent_index``; see ``arboris_nb.runs.retries_of``). The stored original is never
    overwritten: both texts stay in the store. ``store`` is as for ``generate_versions``.

    In memory the new version replaces the old one even if it failed (that is what
    "retry" means); cancelling the retry leaves the old version in place. Its timings are
    offsets from the retry's own start.
    """
    pos = _position(run, index)
    opened, owned = open_store(store)
    handlers = _as_handlers(on_event)
    if opened is not None:
        handlers.insert(0, _retry_link(opened, run.run_id, index))
    try:
        sub = await generate_versions(
            retry_messages(prompt, instruction),
            settings=settings or WriterSettings(version_count=1),
            llm=llm,
            project=run.project,
            chapter=run.chapter,
            on_event=handlers,
            retry=retry,
            indices=[index],
            run_id=retry_run_id(run.run_id),
            raise_on_all_failed=False,
            store=opened if opened is not None else False,
            refresh=True,  # a retry must ask the model again, never replay the reply cache
        )
    finally:
        if owned and opened is not None:
            opened.close()
    new = sub.versions[0]
    if new.status != "cancelled":
        run.versions[pos] = new
    return new


def _as_handlers(on_event: Handlers) -> list[EventHandler]:
    if on_event is None:
        return []
    return [on_event] if callable(on_event) else list(on_event)


def _retry_link(store: RunStore, parent_run_id: str, parent_index: int) -> EventHandler:
    """A subscriber that links the retry's run row to its parent as soon as it exists.

    The store's recorder hears ``RunStarted`` first and writes the row; linking then, not
    at the end, keeps the link even if the process dies during the retry."""

    def link(event: Event) -> None:
        if isinstance(event, RunStarted):
            store.link_retry(event.run.run_id, parent_run_id, parent_index)

    return link


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
        raise ConfigError(f"version {version.index} is {version.status}; only ok versions edit")
    if not text.strip():
        raise ConfigError("edited text must not be empty")
    generated = _generated(version)
    if run is not None and store is not False:
        _save_edit(run, version.index, generated, text, store)
    version.original_content = generated
    version.content = text
    version.edited = True
    return version


def _save_edit(run: Run, index: int, generated: str | None, text: str, store: StoreSpec) -> None:
    opened, owned = open_store(store)
    if opened is None:  # ARBORIS_STORE=off: nothing is saved, as for a generation
        return
    try:
        run_id = _stored_run_id(opened, run.run_id, index, generated)
        opened.save_edit(run_id, index, text)
    finally:
        if owned:
            opened.close()


def _stored_run_id(store: RunStore, run_id: str, index: int, generated: str | None) -> str:
    """The run whose stored version ``index`` has this generated text: after a retry
    the version shown is the retry's (newest first), else the run's own."""
    newest_first = [r.run_id for r in reversed(store.retries_of(run_id, index))]
    for candidate in [*newest_first, run_id]:
        for stored in store.get_versions(candidate):
            if stored.index == index and _generated(stored) == generated:
                return candidate
    raise ConfigError(
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


# -- evaluate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Arboris-Novel's evaluation: the best version, why, and pros/cons per version."""

    best_choice: int
    reason: str
    versions: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    raw: str = field(default="", repr=False)

    def to_html(self) -> str:
        """The evaluation as escaped HTML (CSS class ``arboris-evaluation``)."""
        rows = []
        for index, notes in sorted(self.versions.items()):
            items = [
                f"<li>{label} {html.escape(point)}</li>"
                for key, label in (("pros", "+"), ("cons", "−"))
                for point in notes.get(key, [])
            ]
            rows.append(f"<p><b>Version {index}</b></p><ul>{''.join(items)}</ul>")
        return (
            f'<div class="arboris-evaluation"><p><b>Best: version {self.best_choice}</b> — '
            f"{html.escape(self.reason)}</p>{''.join(rows)}</div>"
        )


def evaluation_messages(versions: Sequence[Version], goal: str | None = None) -> list[Message]:
    """The request asking a model to compare ``versions`` (each under a heading)."""
    parts = [f"[Chapter goal]\n{goal}"] if goal else []
    for v in versions:
        parts.append(f"{_VERSION_HEADING.format(index=v.index)}\n{v.content or ''}")
    return [
        {"role": "system", "content": EVALUATION_SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def _json_object(text: str) -> Any:
    """The first JSON object in a reply: ``<think>`` and code fences tolerated."""
    clean = strip_think(text)
    start, end = clean.find("{"), clean.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(clean[start : end + 1])
    except json.JSONDecodeError:
        return None


def _version_number(key: object) -> int | None:
    match = re.search(r"\d+", str(key))
    return int(match.group()) if match else None


def _points(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(p) for p in value if str(p).strip()]
    return []


def parse_evaluation(text: str) -> Evaluation:
    """Parse an evaluation reply; raise :class:`EvaluationError` when it is not usable.

    Accepts ``best_choice`` (or ``best_version``), ``reason_for_choice`` (or ``reason``)
    and ``evaluation`` (or ``versions``) keyed ``version1`` / ``1`` / ``version_1``.
    """
    data = _json_object(text)
    if not isinstance(data, dict):
        raise EvaluationError("the evaluation reply is not a JSON object", text)
    best = _version_number(data.get("best_choice", data.get("best_version", "")))
    if best is None:
        raise EvaluationError("the evaluation reply has no best_choice version number", text)
    reason = str(data.get("reason_for_choice", data.get("reason", "")))
    notes = data.get("evaluation", data.get("versions", {}))
    versions: dict[int, dict[str, list[str]]] = {}
    if isinstance(notes, dict):
        for key, value in notes.items():
            number = _version_number(key)
            if number is not None and isinstance(value, dict):
                versions[number] = {k: _points(value.get(k)) for k in ("pros", "cons")}
    return Evaluation(best_choice=best, reason=reason, versions=versions, raw=text)


async def evaluate(
    run: Run,
    *,
    llm: LLM = None,
    goal: str | None = None,
    retry: RetryPolicy | None = None,
) -> Evaluation:
    """Ask the model to compare the run's ok versions; return the parsed evaluation.

    The request goes through the engine (one version, so retries and timing are the
    engine's). Needs at least two ok versions; the chosen version must be one of them.
    """
    candidates = run.ok
    if len(candidates) < 2:
        raise ConfigError(f"evaluate needs at least 2 ok versions, the run has {len(candidates)}")
    judged = await generate_versions(
        evaluation_messages(candidates, goal),
        settings=WriterSettings(version_count=1, max_parallel_requests=1),
        llm=llm,
        retry=retry,
        run_id=f"{run.run_id}-eval",
        store=False,  # an evaluation is not a run of chapter versions
    )
    reply = judged.versions[0].content or ""
    evaluation = parse_evaluation(reply)
    if evaluation.best_choice not in {v.index for v in candidates}:
        raise EvaluationError(
            f"the evaluation chose version {evaluation.best_choice}, which is not an ok version",
            reply,
        )
    return evaluation


def _judge_reply(user: str) -> str:
    """A deterministic toy verdict: the richest vocabulary wins (distinct words / words)."""
    headings = list(_HEADING_RE.finditer(user))
    scores: dict[int, tuple[float, int]] = {}
    for pos, match in enumerate(headings):
        end = headings[pos + 1].start() if pos + 1 < len(headings) else len(user)
        words = re.findall(r"\w+", user[match.end() : end].lower())
        scores[int(match.group(1))] = (len(set(words)) / max(len(words), 1), len(words))
    best = max(scores, key=lambda i: (scores[i], -i))
    evaluation = {
        f"version{i}": {
            "pros": [f"{variety:.0%} distinct words"] if i == best else [f"{words} words"],
            "cons": [] if i == best else ["less varied vocabulary than the best version"],
            "overall_review": "simulated review",
        }
        for i, (variety, words) in scores.items()
    }
    verdict = {
        "best_choice": best,
        "reason_for_choice": f"version {best} has the most varied vocabulary (simulated judge)",
        "evaluation": evaluation,
    }
    return json.dumps(verdict, ensure_ascii=False)


def simulated_judge(**options: Any) -> SimulatedLLM:
    """A :class:`SimulatedLLM` that writes chapters and also answers evaluation requests.

    Writing requests get the usual simulated prose; a request built by
    :func:`evaluation_messages` gets a deterministic verdict in Arboris-Novel's JSON
    shape (the version with the most varied vocabulary wins). ``options`` are passed
    to :class:`SimulatedLLM` (``reply`` is taken).
    """
    if "reply" in options:
        raise ConfigError("simulated_judge sets reply itself; do not pass reply=")
    llm = SimulatedLLM(**options)
    llm.reply = _judge_replier(llm)
    return llm


def _judge_replier(llm: SimulatedLLM) -> Callable[[ChatRequest], str]:
    def reply(request: ChatRequest) -> str:
        system = next((m["content"] for m in request.messages if m["role"] == "system"), "")
        if system == EVALUATION_SYSTEM_PROMPT:
            return _judge_reply(request.prompt)
        return simulated_text(request.prompt, request.version_index, llm.output_tokens, llm.seed)

    return reply


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
        raise ConfigError(f"version {version.index} is {version.status}; only ok versions export")
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
