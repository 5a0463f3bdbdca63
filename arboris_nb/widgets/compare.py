"""The Compare tab of :class:`~arboris_nb.widgets.VersionsWidget`: metrics, Diff,
Evaluate, Export.

The tab reads the run and the selection from the widget that holds it (its *host*) and
calls the plain functions of :mod:`arboris_nb.editor`; what it adds is what a person
sees: the diff or verdict shown (``output``, CSS class ``arboris-compare``), a note line
(``note``, ``arboris-compare-note``) that says what happened or what to do, the file name
that follows the selection, and the Evaluate task with its busy state.

At the top, a small table of each done version's text metrics (``metrics``, CSS class
``arboris-compare-metrics``; :func:`~arboris_nb.render.metrics_table`: characters — a CJK
character counts one —, words, paragraphs, dialogue share, repeated phrases, reading
time), one row per version shown, retries included; redrawn when a version ends, is
retried or edited. Versions are named by the desk's keys (``2``, ``(2, 1)`` for retry 1
of version 2; :mod:`~arboris_nb.widgets.desk`), so Diff, Export and Evaluate work on
retries too: the judge compares every done version, retries included, and its verdict
names a retry as ``version 2 · retry 1``.

Rules the tab keeps (issue #11):

* Every failure of Diff, Evaluate or Export ends its busy state and shows here, in words.
* What is shown describes the versions as they are: an edit of a version drops a verdict
  (it judged every version) or a diff of that version; a retry adds a version and keeps
  both.
* A run that ends or a retry keeps the Diff choices A and B when they are still done.
* Evaluate judges by what the tab's form says: the mode (all at once or pairwise), the
  criteria (one per line) and the chapter's context (a collapsible area: blueprint,
  previous summaries, goal, notes). A new run fills the context from its prompt (the
  sections ``chapter_messages`` writes; any other prompt is the goal); what the editor
  typed in a field the prompt does not carry stays.
* Export writes the selected version (or ``index=``) under *its* name,
  ``chapter-<c>-v<i>.md`` (``run-<id>-v<i>.md`` without a chapter; ``…-v<i>-retry<n>.md``
  for a retry), unless the user typed a name; a bare name goes to the export folder; the
  note shows the full path.
* A verdict is stored with the run as it arrives (the host's ``on_verdict``); a reopened
  run shows its last one (:meth:`CompareTab.show_evaluation`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Coroutine
from pathlib import Path
from typing import Any, Protocol

import ipywidgets as widgets

from .. import editor
from ..backends.base import Backend
from ..config import LLMConfig
from ..errors import StateError
from ..judge import MODES, check_mode, judge_requests
from ..judge_prompts import DEFAULT_CRITERIA
from ..prompts import ChapterContext
from ..render import metrics_table
from ..results import Run, Version
from ..retry import RetryPolicy
from ..versionkeys import key_text
from .actions import act, note_html, report, require_run, running_loop, wait_error
from .desk import Desk, VersionKey, key_label

__all__ = ["CompareHost", "CompareTab", "EvaluateForm", "export_name"]

_MODE_LABELS = {"all": "All at once", "pairwise": "Pairwise"}
_MODE_TIPS = {
    "all": "one request: the judge reads every version and picks the best",
    "pairwise": "each pair judged twice, in both orders, to cancel position bias",
}


class CompareHost(Protocol):
    """What the tab reads from the widget that holds it (VersionsWidget)."""

    @property
    def run(self) -> Run | None: ...
    @property
    def selected(self) -> Version | None: ...
    @property
    def busy(self) -> bool: ...
    @property
    def judge(self) -> LLMConfig | Backend: ...
    @property
    def retry_policy(self) -> RetryPolicy | None: ...
    @property
    def export_dir(self) -> Path: ...
    @property
    def desk(self) -> Desk: ...
    @property
    def selected_key(self) -> VersionKey | None: ...


def export_name(run: Run | None, version: Version, key: VersionKey | None = None) -> str:
    """The file name a version is exported under unless the user typed one."""
    if run is not None and run.chapter is not None:
        stem = f"chapter-{run.chapter}"
    else:
        stem = f"run-{run.run_id if run else 'none'}"
    retry = f"-retry{key[1]}" if isinstance(key, tuple) else ""
    return f"{stem}-v{version.index}{retry}.md"


class EvaluateForm:
    """What Evaluate judges by: the mode, the criteria and the chapter's context."""

    def __init__(self) -> None:
        self.mode = widgets.ToggleButtons(
            options=[(_MODE_LABELS[m], m) for m in MODES],
            value="all",
            description="Mode",
            tooltips=[_MODE_TIPS[m] for m in MODES],
            style={"description_width": "initial"},
        )
        self.criteria = _field("Criteria", "one per line")
        self.criteria.value = "\n".join(DEFAULT_CRITERIA)
        self.blueprint = _field("Blueprint", "the outline or world blueprint")
        self.summaries = _field(
            "Previous", "previous chapters' summaries, one per line, oldest first"
        )
        self.goal = _field("Goal", "this chapter's goal")
        self.notes = _field("Notes", "writing notes")
        fields = [self.blueprint, self.summaries, self.goal, self.notes]
        self.context_box = widgets.Accordion(
            children=[widgets.VBox(fields)], titles=("Context",), selected_index=None
        )
        self.context_box.add_class("arboris-context")
        self.box = widgets.VBox([self.mode, self.criteria, self.context_box])

    @property
    def context(self) -> ChapterContext:
        """The chapter's context as typed (empty fields are left out)."""
        return ChapterContext(
            goal=self.goal.value.strip() or None,
            blueprint=self.blueprint.value.strip() or None,
            previous_summaries=self.summaries.value.splitlines(),
            notes=self.notes.value.strip() or None,
        )

    @property
    def chosen_criteria(self) -> list[str]:
        """The criteria, one per line (blank lines skipped)."""
        return [c.strip() for c in self.criteria.value.splitlines() if c.strip()]

    def fill(
        self,
        context: ChapterContext | None = None,
        *,
        criteria: Collection[str] | None = None,
        mode: str | None = None,
    ) -> None:
        """Set what is given: the context's fields (all four), the criteria, the mode."""
        if mode is not None:
            self.mode.value = check_mode(mode)
        if criteria is not None:
            self.criteria.value = "\n".join([criteria] if isinstance(criteria, str) else criteria)
        if context is not None:
            self._set_context(context, keep_typed=False)

    def follow_prompt(self, prompt: str | None) -> None:
        """A new run: its prompt's context fills the form; typed fields it lacks stay."""
        self._set_context(ChapterContext.from_prompt(prompt), keep_typed=True)

    def _set_context(self, context: ChapterContext, *, keep_typed: bool) -> None:
        blueprint = context.blueprint
        if blueprint is not None and not isinstance(blueprint, str):
            blueprint = json.dumps(blueprint, ensure_ascii=False, indent=2)
        values = {
            self.blueprint: blueprint,
            self.summaries: "\n".join(context.previous_summaries) or None,
            self.goal: context.goal_text or ("" if keep_typed else None),
            self.notes: context.notes,
        }
        for field, value in values.items():
            if value is not None or not keep_typed:
                field.value = value or ""


def _field(description: str, placeholder: str) -> widgets.Textarea:
    return widgets.Textarea(
        description=description,
        placeholder=placeholder,
        rows=4,
        layout=widgets.Layout(width="32em"),
    )


class CompareTab:
    """Diff two done versions, Evaluate them with the judge model, Export the chosen one."""

    def __init__(
        self,
        host: CompareHost,
        *,
        on_busy: Callable[[], None],
        on_verdict: Callable[[editor.Evaluation], None] = lambda _e: None,
    ) -> None:
        self._host = host
        self._on_busy = on_busy  # the host re-syncs its buttons when Evaluate starts/ends
        self._on_verdict = on_verdict  # the host stores a verdict as it arrives
        self.evaluation: editor.Evaluation | None = None
        self.task: asyncio.Task[editor.Evaluation] | None = None
        self._describes: frozenset[VersionKey] = frozenset()  # versions the output is about
        self._changes = 0  # counts version changes, so a late verdict knows it is stale
        self._suggested: str | None = None  # the file name we filled in (not the user)
        self.diff_a = widgets.Dropdown(description="A", options=[])
        self.diff_b = widgets.Dropdown(description="B", options=[])
        self.diff_button = widgets.Button(description="Diff")
        self.evaluate_button = widgets.Button(description="Evaluate")
        self.form = EvaluateForm()
        self.export_path = widgets.Text(
            description="File", placeholder="a name (goes to export_dir) or a path"
        )
        self.export_button = widgets.Button(description="Export")
        self.note = widgets.HTML()
        self.note.add_class("arboris-compare-note")
        self.output = widgets.HTML()
        self.output.add_class("arboris-compare")
        self.metrics = widgets.HTML()
        self.metrics.add_class("arboris-compare-metrics")
        self._wire()
        self.box = widgets.VBox(
            [
                self.metrics,
                widgets.HBox([self.diff_a, self.diff_b, self.diff_button]),
                widgets.HBox([self.evaluate_button, self.form.box]),
                widgets.HBox([self.export_path, self.export_button]),
                self.note,
                self.output,
            ]
        )

    def _wire(self) -> None:
        def diff() -> None:
            self.diff(self.diff_a.value, self.diff_b.value)

        self.diff_button.on_click(lambda _b: act(diff, "Diff", self._say))
        self.evaluate_button.on_click(lambda _b: act(self.evaluate, "Evaluation", self._say))
        self.export_button.on_click(lambda _b: act(self.export, "Export", self._say))

    # -- actions ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while an evaluation runs."""
        return self.task is not None and not self.task.done()

    def diff(self, a: VersionKey | None, b: VersionKey | None) -> str:
        """Word-level diff of versions ``a`` → ``b`` as escaped HTML, also shown."""
        require_run(self._host.run)
        if a is None or b is None:
            raise StateError("Diff needs two done versions: wait until two are done")
        desk = self._host.desk
        left, right = desk.version(a), desk.version(b)
        for key, version in ((a, left), (b, right)):
            if not version.ok or version.content is None:
                raise StateError(
                    f"{key_label(key)} is {version.status}: Diff compares done "
                    "versions, choose two in A and B"
                )
        body = editor.diff_html(left.content or "", right.content or "")
        title = f"{key_label(a)} → {key_label(b)}"
        self._show(f"<p><b>{title}</b></p>{body}", {a, b})
        return body

    def evaluate(
        self,
        *,
        context: ChapterContext | None = None,
        criteria: Collection[str] | None = None,
        mode: str | None = None,
    ) -> asyncio.Task[editor.Evaluation]:
        """Ask the judge model to compare the done versions; returns the task at once.

        It judges by the form (mode, criteria, context); ``context``, ``criteria`` and
        ``mode`` given here are written into the form first, so the tab shows them."""
        loop = running_loop("Evaluate")
        run = require_run(self._host.run)
        if self._host.busy:
            raise wait_error("Evaluate")
        candidates = editor.evaluation_candidates(run)
        self.form.fill(context, criteria=criteria, mode=mode)
        chosen = self.form.mode.value
        coro = editor.evaluate(
            run,
            llm=self._host.judge,
            context=self.form.context,
            criteria=self.form.chosen_criteria,
            mode=chosen,
            retry=self._host.retry_policy,
        )
        self._say(note_html(_evaluating(candidates, chosen)))
        self.task = loop.create_task(self._evaluating(coro, run), name="arboris-evaluation")
        self.task.add_done_callback(self._evaluation_ended)
        self._on_busy()
        return self.task

    def export(self, path: str | Path | None = None, *, index: VersionKey | None = None) -> Path:
        """Write the selected version (or ``index``) to Markdown; return its full path."""
        run = self._host.run
        key = self._to_export(run, index)
        version = self._host.desk.version(key)
        target = self._target(path, run, version, key)
        written = editor.export_markdown(version, target, run=run).absolute()
        self._say(note_html(f"Exported {key_label(key).lower()} to {written}"))
        return written

    def cancel(self) -> None:
        """Stop an evaluation in flight (the note then says it was cancelled)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- what the host tells the tab --------------------------------------------------------
    def reset(self, goal: str | None) -> None:
        """A new run starts: nothing shown applies to it; ``goal`` is its prompt's user
        text, which fills the context (see :meth:`EvaluateForm.follow_prompt`)."""
        self.evaluation = None
        self.form.follow_prompt(goal)
        self._changes += 1
        self._show("", set())
        self._say("")
        self.metrics.value = ""
        for dropdown in (self.diff_a, self.diff_b):
            dropdown.options = []
        if self.export_path.value == self._suggested:  # a name the user typed stays
            self.export_path.value = ""
        self._suggested = None

    def refresh(self, run: Run) -> None:
        """Redraw the metrics; offer the done versions in A and B, keeping the choices
        that are still done."""
        shown = [(k, label, v) for k, label, v in self._host.desk.labelled() if v.ok]
        self._show_metrics(shown)
        indices = [k for k, _, _ in shown]
        options = [(label, k) for k, label, _ in shown]
        if list(self.diff_a.options) == options:
            return  # unchanged: keep the user's choices, send nothing
        a, b = self.diff_a.value, self.diff_b.value
        for dropdown in (self.diff_a, self.diff_b):
            dropdown.options = options  # (this resets the value to the first option)
        if not indices:
            return
        a = a if a in indices else indices[0]
        others = [i for i in indices if i != a] or [a]
        self.diff_a.value = a
        self.diff_b.value = b if b in indices and b != a else others[0]

    def follow_selection(self, version: Version, key: VersionKey | None = None) -> None:
        """The selection changed: the file name follows it unless the user typed one."""
        name = export_name(self._host.run, version, key)
        if self.export_path.value.strip() in ("", self._suggested):
            self.export_path.value = name
        self._suggested = name

    def show_evaluation(self, evaluation: editor.Evaluation) -> None:
        """A stored verdict (a reopened run): shown, and its mode, criteria and context
        fill the form, so Evaluate asks again the same way."""
        self.evaluation = evaluation
        self.form.fill(evaluation.context, criteria=evaluation.criteria, mode=evaluation.mode)
        run = self._host.run
        self._show(evaluation.to_html(), self._host.desk.keys() if run else set())

    def versions_changed(self, indices: Collection[VersionKey]) -> None:
        """Versions were edited: drop what described their old text."""
        self._changes += 1
        if self._host.run is not None:
            self._show_metrics([x for x in self._host.desk.labelled() if x[2].ok])
        changed = ", ".join(key_label(k).removeprefix("Version ") for k in indices)
        had_verdict, self.evaluation = self.evaluation is not None, None
        if not self._describes & set(indices) and not had_verdict:
            return
        self._show("", set())
        again = "Evaluate for a new verdict" if had_verdict else "Diff again"
        self._say(
            note_html(
                f"Version {changed} changed, so what was shown here was dropped: press {again}."
            )
        )

    def sync_busy(self, busy: bool) -> None:
        """Evaluate waits while the host runs anything (a run, a retry, an evaluation)."""
        self.evaluate_button.disabled = busy

    # -- helpers -----------------------------------------------------------------------------
    async def _evaluating(
        self, coro: Coroutine[Any, Any, editor.Evaluation], run: Run
    ) -> editor.Evaluation:
        changes = self._changes
        try:
            evaluation = await coro
            if changes == self._changes:
                self._on_verdict(evaluation)  # stored first: shown only once it is kept
                self.evaluation = evaluation
                self._show(evaluation.to_html(), self._host.desk.keys())
                self._say("")
            else:  # a version was edited while the judge read the old text
                self._say(note_html("The versions changed meanwhile: press Evaluate again."))
        except asyncio.CancelledError:
            self._say(note_html("Evaluation cancelled."))
            raise
        except Exception as exc:
            report(exc, "Evaluation", self._say)
            raise
        return evaluation

    def _evaluation_ended(self, task: asyncio.Task[editor.Evaluation]) -> None:
        # Retrieve the outcome so an error is never "never retrieved"; it was shown already.
        if not task.cancelled():
            task.exception()
        self._on_busy()

    def _to_export(self, run: Run | None, index: VersionKey | None) -> VersionKey:
        require_run(run)
        if index is not None:
            return index
        key = self._host.selected_key
        if key is None or self._host.selected is None:
            raise StateError(
                "Select a version first: click Select on the panel you want to export "
                "(or pass index=)"
            )
        return key

    def _target(
        self, path: str | Path | None, run: Run | None, version: Version, key: VersionKey
    ) -> Path:
        typed = str(path) if path is not None else self.export_path.value.strip()
        if not typed or (path is None and typed == self._suggested):
            return self._host.export_dir / export_name(run, version, key)
        target = Path(typed).expanduser()
        bare = not target.is_absolute() and target.parent == Path(".")
        return self._host.export_dir / target if bare else target

    def _show_metrics(self, shown: list[tuple[VersionKey, str, Version]]) -> None:
        labels = [label.removeprefix("Version ") for _, label, _ in shown]
        self.metrics.value = metrics_table([v for _, _, v in shown], labels)

    def _show(self, value: str, describes: Collection[VersionKey]) -> None:
        self.output.value = value
        self._describes = frozenset(describes)

    def _say(self, value: str) -> None:
        self.note.value = value


def _evaluating(candidates: Collection[VersionKey], mode: str) -> str:
    names = ", ".join(key_text(k) for k in candidates)
    if mode == "all":
        return f"Evaluating versions {names}…"
    requests = judge_requests(len(candidates), "pairwise")
    return f"Evaluating versions {names} pairwise, both orders ({requests} judge requests)…"
