"""VersionsWidget: generate N versions and watch them stream side by side, then edit.

CSS classes (stable; the browser test finds the widget by them):
    arboris-versions       the whole widget (root)
    arboris-controls       the controls row(s)
    arboris-progress       the progress line: bar coloured by outcome, "1 ok · 2 cancelled of 3"
    arboris-message        status line (errors, notes)
    arboris-panels         the grid of panels
    arboris-panel          one version's panel (also arboris-panel-<index>; a retry's:
                           arboris-retry-panel and arboris-panel-<index>-retry-<n>)
    arboris-panel-header   its header; inside it:
    arboris-status         the status word, exactly one of
                           idle queued running retrying done failed cancelled
    arboris-panel-text     the panel body (the version's text)
    arboris-panel-note     the note under the panel's buttons (its last action, in words)
    arboris-panel-notes    the panel's scene-notes field (stored, sent with Retry)
Buttons: Generate, Stop, +1; per panel Select, Retry, Edit (Save, Cancel), Stop, Wide; Compare tab
(``compare.py``): metrics table, Diff, Evaluate, Export. An action's error shows where it
was started — the status line, the panel's note, or the Compare tab's note — in words
(``actions.py``).

The editor's desk (``desk.py``): a Retry adds a *linked* version in a new panel after the
one it retries (``w.panel((2, 1))`` is retry 1 of version 2), the original stays; Select,
Evaluate and scene notes are stored as they happen; :meth:`VersionsWidget.load` reopens a
stored run with all of that.

The live part — panels, progress line, streaming — is a :class:`PanelBoard` subscribed to
the engine's events; panel header and text are drawn in the browser by an anywidget that
receives streamed text as deltas (one small message per flush for all panels, see
``stream.py``), so a run costs a constant number of bytes per character however long the
chapter. This class holds the controls, the editor actions and the run's task.

A run is started with :func:`~arboris_nb.engine.start_versions`: the widget keeps the
returned :class:`~arboris_nb.handle.RunHandle` (``w.run`` is ``handle.run`` from the first
moment, Stop is ``handle.cancel()``) and subscribes the board to the run's events. The
pool is live: **+1** is ``handle.add_versions(1)`` (a panel appears when the engine queues
it), a panel's **Stop** is ``handle.cancel_version(i)``, and the **Extra** control starts
that many more versions and keeps the first ones to finish (``extra_versions``).
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import ipywidgets as widgets

from .. import _messages, editor
from ..backends.base import Backend, Message
from ..config import COUNT_RANGE, EXTRA_RANGE, LLMConfig, WriterSettings
from ..engine import start_versions
from ..errors import ConfigError, StateError
from ..events import Event, EventHandler, LimitChanged, RunFinished, RunStarted
from ..prompts import ChapterContext, as_messages
from ..results import FRAME_COLUMNS, Run, Version
from ..retry import RetryPolicy
from ..store import StoreSpec
from .actions import act, report, running_loop, wait_error
from .board import PanelBoard
from .compare import CompareTab
from .desk import Desk, VersionKey, key_label, loaded_summary, parse_key
from .linked import RetryLinks
from .panels import VersionPanel
from .stream import DeltaStream
from .timeline import timeline_html

if TYPE_CHECKING:  # pandas is heavy; imported when a frame is asked for
    import pandas as pd

    from ..handle import RunHandle

__all__ = ["VersionsWidget"]

log = logging.getLogger("arboris_nb.widgets")
T = TypeVar("T")

_STYLE = """<style>
.arboris-diff del{background:#f8d7da}.arboris-diff ins{background:#d4edda;text-decoration:none}
</style>"""


class VersionsWidget:
    """Controls + one live panel per version + editor actions, over the engine's events.

    ``generate()`` schedules the run on the kernel's loop and returns its task at once;
    ``w.run`` is the last Run (live while it streams), ``w.selected`` the chosen Version,
    ``w.frame()`` the run's DataFrame. ``llm`` defaults to the configured API, else to
    :func:`~arboris_nb.editor.simulated_judge` (offline). ``judge`` is the model used by
    Evaluate (default: ``llm``; a plain ``SimulatedLLM`` judges as ``simulated_judge``).
    ``stream`` tunes how streamed text is batched
    (:class:`~arboris_nb.widgets.stream.DeltaStream`). ``w.panels`` are the panels, each
    showing a status word, stats, text and a note (:class:`VersionPanel`); ``w.compare``
    is the Compare tab (:class:`~arboris_nb.widgets.compare.CompareTab`).

    ``store`` is where runs, edits and decisions go (None: ``ARBORIS_STORE``; a path, a
    ``RunStore``, or False: memory only). Versions are named by number, or ``(i, n)`` for
    retry n of version i (:mod:`~arboris_nb.widgets.desk`).

    Size: over 300 lines because it is the one public surface of the editor — each public
    method is a short docstring'd delegation — and holds the controls, the run's task and
    the jobs' wiring. Everything else lives apart: panels, progress and streaming in
    :class:`PanelBoard`; Diff, Evaluate, Export and metrics in the Compare tab; which
    versions are shown, the stored decisions and reopening in the desk (``desk.py``); how
    a retry becomes a linked panel in :class:`~arboris_nb.widgets.linked.RetryLinks`.
    """

    def __init__(
        self,
        llm: LLMConfig | Backend | None = None,
        settings: WriterSettings | None = None,
        *,
        prompt: str = "",
        retry: RetryPolicy | None = None,
        judge: LLMConfig | Backend | None = None,
        stream: DeltaStream | None = None,
        export_dir: str | Path = ".",
        store: StoreSpec = None,
    ) -> None:
        self.llm, note = _default_llm(llm)
        self.judge = judge or self.llm
        self.settings = settings or WriterSettings.from_env()
        self.retry_policy = retry
        self.export_dir = Path(export_dir)
        self.run: Run | None = None
        self._limits: list[tuple[float, int]] = []  # (t, limit) of the run's LimitChanged
        self.task: asyncio.Task[Run] | None = None
        self._handle: RunHandle | None = None
        self._messages: list[Message] = []
        self.store = store
        self.desk = Desk(store)
        self._selected: VersionKey | None = None
        self._jobs: set[asyncio.Task[Any]] = set()  # strong refs to action tasks
        self._timeline_timer: asyncio.TimerHandle | None = None
        self.board = PanelBoard(self.settings.version_count, stream)
        self.links = RetryLinks(self.board, self.desk, self._refresh_data)
        # What hears a run's events (a retry's have their own: RetryLinks): the board first.
        self._subscribers: list[EventHandler] = [self.board.on_event, self._on_run_event]
        self._retrying: dict[VersionKey, asyncio.Task[Version]] = {}  # a retry panel's job
        self.board.on(
            select=self._select_clicked,
            retry=self._retry_clicked,
            save=self._save,
            stop=self._stop_clicked,
            notes=self._notes_changed,
        )
        self._build(prompt)
        if note:
            self._say(note)

    # -- layout ---------------------------------------------------------------------------
    def _build(self, prompt: str) -> None:
        low, high = COUNT_RANGE
        s = self.settings
        self.prompt = widgets.Textarea(
            value=prompt,
            placeholder="Write chapter 3 …",
            description="Prompt",
            layout=widgets.Layout(width="100%", height="6em"),
        )
        self.count = widgets.BoundedIntText(
            value=s.version_count, min=low, max=high, description="Versions"
        )
        self.extra = widgets.BoundedIntText(
            value=s.extra_versions,
            min=EXTRA_RANGE[0],
            max=EXTRA_RANGE[1],
            description="Extra",
            tooltip="Start this many more versions and keep the first to finish",
        )
        self.parallel = widgets.Checkbox(value=s.parallel, description="Parallel")
        limits: list[int | str] = [*range(low, high + 1), "auto"]
        self.max_parallel = widgets.Dropdown(
            options=limits, value=s.max_parallel_requests, description="Max parallel"
        )
        self.model = widgets.Text(value=self._model_name(), description="Model")
        self.model.disabled = not isinstance(self.llm, LLMConfig)
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", disabled=True)
        self.add_button = widgets.Button(
            description="+1", disabled=True, tooltip="One more version of this prompt, in this run"
        )
        self.generate_button.on_click(lambda _b: act(self.generate, "Generate", self._show_message))
        self.stop_button.on_click(lambda _b: act(self.stop, "Stop", self._show_message))
        self.add_button.on_click(lambda _b: act(self.add_version, "+1", self._show_message))
        self.progress = self.board.progress
        self.message = widgets.HTML()
        self.message.add_class("arboris-message")
        controls = widgets.VBox(
            [
                self.prompt,
                widgets.HBox(
                    [self.count, self.extra, self.parallel, self.max_parallel, self.model]
                ),
                widgets.HBox(
                    [self.generate_button, self.stop_button, self.add_button, self.progress]
                ),
            ]
        )
        controls.add_class("arboris-controls")
        self.tabs = self._build_tabs()
        self.root = widgets.VBox(
            [widgets.HTML(_STYLE), controls, self.message, self.board.grid, self.tabs]
        )
        self.root.add_class("arboris-versions")

    def _build_tabs(self) -> widgets.Tab:
        self.compare = CompareTab(
            self, on_busy=self._sync_busy, on_verdict=lambda e: self.desk.record_evaluation(e)
        )
        self.timeline = widgets.HTML(timeline_html(None))
        self.table = widgets.HTML()
        return widgets.Tab(
            children=[self.compare.box, self.timeline, self.table],
            titles=("Compare", "Timeline", "Data"),
        )

    def _model_name(self) -> str:
        return str(getattr(self.llm, "model", "") or "")

    # -- display ---------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.root._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)  # stable text, no timings (nbval compares it)
        return bundle

    def __repr__(self) -> str:
        own = sum(isinstance(p.key, int) for p in self.panels)
        retries = len(self.panels) - own
        linked = f", retries={retries}" if retries else ""
        return f"VersionsWidget(versions={own}{linked}, model={self._model_name()!r})"

    # -- public API ------------------------------------------------------------------------
    @property
    def panels(self) -> tuple[VersionPanel, ...]:
        """One panel per version, in order, each retry right after the version it retried
        (what each shows: status, stats, text, note, scene notes…)."""
        return tuple(self.board.panels.values())

    def panel(self, index: VersionKey) -> VersionPanel:
        """The panel of version ``index`` (1-based), or ``(i, n)``: retry n of version i."""
        try:
            return self.board.panels[parse_key(index)]
        except KeyError:
            raise ConfigError(f"there is no panel {index} (1 to {len(self.panels)})") from None

    @classmethod
    def load(
        cls,
        run_id: str,
        *,
        store: StoreSpec = None,
        llm: LLMConfig | Backend | None = None,
        **options: Any,
    ) -> VersionsWidget:
        """Reopen a stored run: final texts, edits, retries (linked panels), scene notes,
        the selection and the last evaluation, as they were stored; the editor goes on
        (select, retry, edit, diff, evaluate, export) and stores against the same run.

        An unknown id is :class:`~arboris_nb.runs.RunNotFound` (a ConfigError), a store
        from a newer arboris_nb is refused: nothing stored changes. ``options`` are the
        constructor's (``judge=``, ``retry=``, ``export_dir=``…)."""
        from .desk import open_desk  # the load path lives with the desk

        return open_desk(cls, run_id, store=store, llm=llm, **options)

    @property
    def busy(self) -> bool:
        """True while a generate, retry or evaluate task is running."""
        jobs = any(not j.done() for j in self._jobs) or self.compare.busy
        return bool(self.task and not self.task.done()) or jobs

    @property
    def selected(self) -> Version | None:
        """The version marked with Select (None if none, or if it is no longer ok)."""
        if self.run is None or self._selected is None:
            return None
        version = self.desk.version(self._selected)
        return version if version.ok else None

    @property
    def selected_key(self) -> VersionKey | None:
        """The key of the selected version (``2`` or ``(2, 1)``), None if none."""
        return self._selected if self.selected is not None else None

    def frame(self) -> pd.DataFrame:
        """The last run's DataFrame (``Run.to_frame``); empty before the first run."""
        if self.run is None:
            import pandas as pd

            return pd.DataFrame(columns=list(FRAME_COLUMNS))
        return self.run.to_frame()

    def generate(
        self,
        prompt: str | Sequence[Message] | None = None,
        *,
        project: str | None = None,
        chapter: int | None = None,
    ) -> asyncio.Task[Run]:
        """Start a run on the running loop and return its task at once (await it for the Run).

        ``prompt`` defaults to the prompt box. Settings come from the controls. A setting
        the engine refuses (or no API configured) raises :class:`ConfigError` here, and
        what the widget showed stays as it was.
        """
        loop = running_loop("VersionsWidget.generate()")
        if self.busy:
            raise StateError("A run is already in progress: press Stop or wait for it to end")
        if isinstance(prompt, str):
            self.prompt.value = prompt
        messages = as_messages(self.prompt.value if prompt is None else prompt)
        settings = self._settings_from_controls()
        handle = start_versions(
            messages,
            settings=settings,
            llm=self._llm_for_run(),
            project=project,
            chapter=chapter,
            on_event=self._subscribers,
            retry=self.retry_policy,
            raise_on_all_failed=False,
            store=self.store,
        )
        # The run's first event comes when the loop next runs: the panels are reset first.
        self._messages, self.settings, self._handle = messages, settings, handle
        self._reset(handle.run)
        self.task = loop.create_task(self._generate(handle), name="arboris-generate")
        self.task.add_done_callback(lambda task: self._generation_ended(task, handle))
        self.task.add_done_callback(self._finished_task)
        self._sync_busy()
        return self.task

    def stop(self) -> None:
        """Cancel every in-flight request; finished versions stay, the rest are cancelled.

        The run is cancelled through its handle, so ``w.task`` still returns the Run."""
        if self._handle is not None:
            self._handle.cancel()  # safe when it has ended: then nothing happens
        for task in self._jobs:
            if not task.done():
                task.cancel()
        self.compare.cancel()

    def add_version(self, k: int = 1) -> list[Version]:
        """Start ``k`` more versions of the prompt in the running run (the **+1** button);
        their panels appear as the engine queues them. The run then keeps ``k`` more (at
        most 10 in all)."""
        handle = self._live_handle("+1 adds a version to a running run")
        return handle.add_versions(k)

    def stop_version(self, index: VersionKey) -> bool:
        """Stop version ``index`` only (its panel's **Stop**); the others go on. A retry's
        panel stops that retry (the version it retries is untouched)."""
        key = parse_key(index)
        job = self._retrying.get(key)
        if job is not None and not job.done():
            return job.cancel()
        if isinstance(key, tuple):
            raise StateError(f"{key_label(key)} is not running")
        return self._live_handle(f"{key_label(key)} is not running").cancel_version(key)

    def select(self, index: VersionKey) -> Version:
        """Mark version ``index`` as the chosen one (only a done version can be chosen);
        the choice is stored with the run (``Run.selection``)."""
        key = parse_key(index)
        version = self._version(key)
        if not version.ok:
            raise StateError(
                f"{key_label(key)} is {version.status}: only a done version can be selected"
                + ("; press Retry on its panel first" if version.done else "; wait for it")
            )
        self.desk.record_selection(key)  # stored first: a refusal changes nothing shown
        self._mark_selected(key)
        return version

    def retry(
        self, index: VersionKey, instruction: str | None = None, *, notes: str | None = None
    ) -> asyncio.Task[Version]:
        """Write a new version of version ``index`` (with an optional instruction and scene
        notes); returns its task. The new version is *linked*: a new panel after the
        original, which stays as it is (text, edits, selection). ``notes`` default to the
        version's own. Stored as a run of its own linked to this one."""
        loop = running_loop("VersionsWidget.retry()")
        key = parse_key(index)
        version = self._version(key)  # refuses an unknown index (or no run) now
        if self.run is None or self.busy:
            raise wait_error("Retry")
        parent = key if isinstance(key, int) else key[0]
        panel = self.links.open(parent)
        coro = editor.retry_version(
            self.run,
            parent,
            self._messages,
            instruction=instruction,
            notes=notes if notes is not None else version.notes,
            llm=self._llm_for_run(),
            settings=self.settings,
            retry=self.retry_policy,
            on_event=self.links.subscribers(panel),
            store=self.store,
        )
        job = self.links.run(coro, panel)
        task = self._start_job(loop, job, "Retry", self.links.ended(panel), self.panel(key))
        self._retrying[panel.key] = task
        return task

    def edit(self, index: VersionKey, text: str) -> Version:
        """Replace version ``index``'s text with ``text`` and mark the panel edited.

        The edit is saved to the run store (the generated text is kept there too)."""
        key = parse_key(index)
        version = editor.edit_version(self._version(key), text, run=self.run, store=self.store)
        self.panel(key).mark_edited(version)
        self.compare.versions_changed([key])
        self._say(f"Saved your edit of {key_label(key).lower()}.")
        self._refresh_data()
        return version

    def set_notes(self, index: VersionKey, notes: str) -> Version:
        """Keep scene notes with version ``index`` (stored; sent with its next Retry)."""
        key = parse_key(index)
        self.desk.record_notes(key, notes)
        panel = self.panel(key)
        panel.show_notes(notes)
        panel.show_note(html.escape("✓ notes saved"))
        return self._version(key)

    def diff(self, a: VersionKey, b: VersionKey) -> str:
        """Word-level diff of versions ``a`` → ``b`` as escaped HTML, also shown."""
        return self.compare.diff(parse_key(a), parse_key(b))

    def evaluate(
        self,
        *,
        context: ChapterContext | None = None,
        criteria: Collection[str] | None = None,
        mode: str | None = None,
    ) -> asyncio.Task[editor.Evaluation]:
        """Ask the judge model to compare the run's done versions; returns the task. The
        Compare tab's form says how (``context``, ``criteria``, ``mode`` given here are
        written into it first); the verdict is stored with the run."""
        return self.compare.evaluate(context=context, criteria=criteria, mode=mode)

    def export(self, path: str | Path | None = None, *, index: VersionKey | None = None) -> Path:
        """Write the selected version (or ``index``) to Markdown; return its full path.

        The name follows the selection (``chapter-5-v2.md``) unless one is given or typed
        in the File box; a bare name goes to ``export_dir``."""
        return self.compare.export(path, index=index)

    # -- the run -------------------------------------------------------------------------
    async def _generate(self, handle: RunHandle) -> Run:
        """Await the run; its failure is shown in words, and ``w.task`` resolves to it."""
        try:
            run = await handle
        except Exception as exc:
            if not any(v.started_at is not None for v in handle.run.versions):
                self.board.abandon()  # the run could not start (e.g. the client did not open)
            report(exc, "Generation", self._show_message)
            raise
        if not run.ok:
            self._say(f"All {run.version_count} versions failed.")
        return run

    def _generation_ended(self, task: asyncio.Task[Run], handle: RunHandle) -> None:
        """``w.task`` itself was cancelled (Stop cancels the handle, and the Run returns).

        Cancelled while awaiting the handle, the run was cancelled with it; cancelled
        before its first step, it never awaited the handle: the run is stopped here. Either
        way the engine marks the versions cancelled, and the panels hear it as events."""
        if task.cancelled():
            handle.cancel()

    def _finished_task(self, task: asyncio.Task[Any]) -> None:
        # Retrieve the outcome so an error is never "never retrieved"; it was shown already.
        if not task.cancelled():
            task.exception()
        self._sync_busy()
        self._refresh_data()

    def _start_job(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, T],
        what: str,
        then: Callable[[T], None],
        panel: VersionPanel,
    ) -> asyncio.Task[T]:
        task = loop.create_task(self._guard(coro, what, then, panel), name=f"arboris-{what}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        task.add_done_callback(self._finished_task)
        self._sync_busy()
        return task

    async def _guard(
        self,
        coro: Coroutine[Any, Any, T],
        what: str,
        then: Callable[[T], None],
        panel: VersionPanel,
    ) -> T:
        """Run a panel's job; its error or cancellation shows on that panel (the one
        whose button started it), its outcome where ``then`` shows it."""
        try:
            result = await coro
            then(result)
        except asyncio.CancelledError:
            panel.show_note(html.escape(f"{what} cancelled: the previous text is kept."))
            raise
        except Exception as exc:
            report(exc, what, panel.show_note)
            raise
        return result

    # -- events (the widget is a subscriber; it never times or retries anything) --------
    def _on_run_event(self, event: Event) -> None:
        """What the widget itself follows of a run (the board follows the rest)."""
        if isinstance(event, LimitChanged) and event.run is self.run:
            self._limits.append((event.t, event.limit))
        elif isinstance(event, RunStarted) and self._timeline_timer is None:
            self._tick_timeline()
        elif isinstance(event, RunFinished):
            self._refresh_data()

    def _tick_timeline(self) -> None:
        """While a run streams, redraw the Timeline tab once a second — when it is open."""
        self._timeline_timer = None
        if not self.board.live:
            return
        if self.tabs.selected_index == 1:
            self.timeline.value = self._timeline_html()
        loop = asyncio.get_running_loop()
        self._timeline_timer = loop.call_later(1.0, self._tick_timeline)

    def _refresh_data(self) -> None:
        """Redraw what depends on the finished run: table, timeline, diff choices."""
        if self.run is None:
            return
        self.table.value = self.frame().to_html(index=False, float_format="{:.3f}".format)
        self.timeline.value = self._timeline_html()
        self.compare.refresh(self.run)

    def _timeline_html(self) -> str:
        """The phases chart; for an ``auto`` run also the limit trace (limit, in flight, 429s)."""
        now = self.board.clock()
        chart = timeline_html(self.run, now)
        if self.run is None or self.run.max_parallel_requests != "auto":
            return chart
        from ..analysis.trace import limit_trace_html  # analysis loads matplotlib: on demand

        return chart + limit_trace_html(self.run, self._limits, now)

    # -- helpers -------------------------------------------------------------------------
    def _reset(self, run: Run) -> None:
        """A new run (every version queued) replaces what was shown."""
        self.run, self._selected = run, None
        self.desk.reset(run)
        self._limits = []
        self.message.value = ""
        self.compare.reset(_goal(self._messages))
        self.board.start(run.version_count, run)

    def _show_stored(self, run: Run, messages: list[Message]) -> None:
        """A reopened run as it was stored: panels (retries linked, notes, edits), the
        selection, the last evaluation, the metrics; a run's messages for Retry."""
        self._messages, self.prompt.value = messages, _goal(messages) or ""
        self.run, self._handle, self.task = run, None, None
        self.desk.reset(run)
        self.compare.reset(_goal(messages))
        self.board.show(run, self.desk.retries, _messages.lang())
        selected = self.desk.key_of(run.selection)
        self._mark_selected(selected)
        if run.evaluation is not None:
            self.compare.show_evaluation(run.evaluation)
        self._refresh_data()
        self._sync_busy()
        self._say(loaded_summary(run, self.desk, selected))

    def _mark_selected(self, key: VersionKey | None) -> None:
        self._selected = key
        for panel in self.panels:
            panel.mark_selected(panel.key == key)
        if key is not None:
            self.compare.follow_selection(self._version(key), key)

    def _sync_busy(self) -> None:
        busy = self.busy
        self.generate_button.disabled = busy
        self.stop_button.disabled = not busy
        self.add_button.disabled = self._handle is None or self._handle.done()
        self.compare.sync_busy(busy)
        self.board.set_busy(busy)

    def _settings_from_controls(self) -> WriterSettings:
        return WriterSettings(
            version_count=self.count.value,
            parallel=self.parallel.value,
            max_parallel_requests=self.max_parallel.value,
            # The fan-out the widget was given; serial mode asks one version at a time, and
            # extras need one request per version (WriterSettings refuses n with extras).
            fanout=self.settings.fanout
            if self.parallel.value and not self.extra.value
            else "requests",
            extra_versions=self.extra.value,
        )

    def _live_handle(self, what: str) -> RunHandle:
        handle = self._handle
        if handle is None or handle.done():
            raise StateError(f"{what}: press Generate first, and use it while the run streams")
        return handle

    def _llm_for_run(self) -> LLMConfig | Backend:
        model = self.model.value.strip()
        if isinstance(self.llm, LLMConfig) and model and model != self.llm.model:
            return self.llm.with_(model=model)
        return self.llm

    def _version(self, index: VersionKey) -> Version:
        return self.desk.version(index)

    def _say(self, text: str) -> None:
        self.message.value = html.escape(text)

    def _show_message(self, value: str) -> None:
        self.message.value = value

    def _panel_act(self, index: VersionKey, action: Callable[[], object], name: str) -> None:
        """A panel button's action; its error shows on that panel, in words."""
        panel = self.panel(index)
        panel.show_note("")
        act(action, name, panel.show_note)

    def _select_clicked(self, index: VersionKey) -> None:
        self._panel_act(index, lambda: self.select(index), "Select")

    def _stop_clicked(self, index: VersionKey) -> None:
        self._panel_act(index, lambda: self.stop_version(index), "Stop")

    def _retry_clicked(self, index: VersionKey, instruction: str, notes: str) -> None:
        def retry() -> None:
            if notes != (self._version(index).notes or ""):
                self.set_notes(index, notes)  # what is sent is also what is kept
            self.retry(index, instruction or None, notes=notes or None)

        self._panel_act(index, retry, "Retry")

    def _save(self, index: VersionKey, text: str) -> None:
        self._panel_act(index, lambda: self.edit(index, text), "Save")

    def _notes_changed(self, index: VersionKey, notes: str) -> None:
        self._panel_act(index, lambda: self.set_notes(index, notes), "Notes")


def _goal(messages: Sequence[Message]) -> str | None:
    """The chapter goal Evaluate shows the judge: the last user message."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)


def _default_llm(llm: LLMConfig | Backend | None) -> tuple[LLMConfig | Backend, str | None]:
    """The given model, else the configured API, else the offline simulated model."""
    if llm is not None:
        return llm, None
    config = LLMConfig.from_env()
    if config.configured:
        return config, None
    note = (
        "No API configured (OPENAI_API_KEY / OPENAI_API_BASE_URL): "
        "using the offline simulated model."
    )
    return editor.simulated_judge(), note
