"""VersionsWidget: generate N versions and watch them stream side by side, then edit.

CSS classes (stable; the browser test finds the widget by them):
    arboris-versions       the whole widget (root)
    arboris-controls       the controls row(s)
    arboris-progress       "2/3 done · 1.4 s" line
    arboris-message        status line (errors, notes)
    arboris-panels         the grid of panels
    arboris-panel          one version's panel (also arboris-panel-<index>)
    arboris-panel-header   its header; inside it:
    arboris-status         the status word, exactly one of
                           queued running retrying done failed cancelled
    arboris-panel-text     the panel body (the version's text)
Buttons: Generate, Stop; per panel Select, Retry, Edit (Save, Cancel); Compare tab
(``compare.py``): Diff, Evaluate, Export. An action's error shows where it was started —
the status line, the panel's note, or the Compare tab's note — in words (``actions.py``).

Why plain ipywidgets rather than anywidget: every piece is a standard widget, so the
whole view can be built and asserted on in plain pytest, nothing needs a JavaScript
build, and a saved notebook keeps the final texts in ordinary widget state. The cost
of standard widgets — each update resends the whole value — is handled by throttling:
the widget is an ``on_event`` subscriber that only buffers tokens; a timer on the
kernel's loop flushes dirty panels at most ``flush_hz`` times a second (the first token
of an attempt is shown at once), and headers/progress/timeline refresh at a few hertz.
So the message count is bounded by the flush rate, not by the token rate: 3 panels at
200 tokens/s send ~60 text updates a second, far below Jupyter's 1000 msgs/s limit.
The flush interval also stretches when panels hold a lot of text (``max_chars_per_s``),
bounding bytes as well. anywidget would send smaller deltas, but needs an ES-module
view and its own tests in a browser for every control; not worth it at N <= 10.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import ipywidgets as widgets

from .. import _messages, editor
from ..backends.base import Backend, Message
from ..config import COUNT_RANGE, LLMConfig, WriterSettings
from ..engine import generate_versions
from ..errors import ConfigError, StateError
from ..events import (
    Event,
    RunFinished,
    RunStarted,
    TokenDelta,
    VersionCancelled,
    VersionEvent,
    VersionFailed,
    VersionFinished,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from ..prompts import as_messages
from ..results import FRAME_COLUMNS, Run, Version
from ..retry import RetryPolicy
from .actions import act, report, running_loop, version_of, wait_error
from .compare import CompareTab
from .panels import VersionPanel
from .timeline import timeline_html

if TYPE_CHECKING:  # pandas is heavy; imported when a frame is asked for
    import pandas as pd

__all__ = ["VersionsWidget"]

log = logging.getLogger("arboris_nb.widgets")
T = TypeVar("T")

_STYLE = """<style>
.arboris-status{padding:0 6px;border-radius:8px;background:#eee;font-size:smaller}
.arboris-status-running,.arboris-status-retrying{background:#fff3cd}
.arboris-status-done{background:#d4edda}
.arboris-status-failed{background:#f8d7da}
.arboris-status-cancelled{background:#e2e3e5}
.arboris-badge{padding:0 6px;border-radius:8px;background:#cfe2ff;font-size:smaller}
.arboris-diff del{background:#f8d7da}.arboris-diff ins{background:#d4edda;text-decoration:none}
</style>"""


class VersionsWidget:
    """Controls + one live panel per version + editor actions, over the engine's events.

    ``generate()`` schedules the run on the kernel's loop and returns its task at once;
    ``w.run`` is the last Run (live while it streams), ``w.selected`` the chosen Version,
    ``w.frame()`` the run's DataFrame. ``llm`` defaults to the configured API, else to
    :func:`~arboris_nb.editor.simulated_judge` (offline). ``judge`` is the model used by
    Evaluate (default: ``llm``; a plain ``SimulatedLLM`` judges as ``simulated_judge``).
    ``w.compare`` is the Compare tab (:class:`~arboris_nb.widgets.compare.CompareTab`).
    """

    def __init__(
        self,
        llm: LLMConfig | Backend | None = None,
        settings: WriterSettings | None = None,
        *,
        prompt: str = "",
        retry: RetryPolicy | None = None,
        judge: LLMConfig | Backend | None = None,
        flush_hz: float = 20.0,
        max_chars_per_s: int = 500_000,
        export_dir: str | Path = ".",
    ) -> None:
        if not 1.0 <= flush_hz <= 60.0:
            raise ConfigError(f"flush_hz must be from 1 to 60, got {flush_hz}")
        self.llm, note = _default_llm(llm)
        self.judge = judge or self.llm
        self.settings = settings or WriterSettings.from_env()
        self.retry_policy = retry
        self.export_dir = Path(export_dir)
        self.run: Run | None = None
        self.task: asyncio.Task[Run] | None = None
        self._interval = 1.0 / flush_hz
        self._max_chars_per_s = max_chars_per_s
        self._messages: list[Message] = []
        self._panels: dict[int, VersionPanel] = {}
        self._selected: int | None = None
        self._jobs: set[asyncio.Task[Any]] = set()  # strong refs to action tasks
        self._live: set[int] = set()  # id() of runs between RunStarted and RunFinished
        self._stopping = False
        self._timer: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._t0: float | None = None  # loop time of the main run's start
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
        self.parallel = widgets.Checkbox(value=s.parallel, description="Parallel")
        limits: list[int | str] = [*range(low, high + 1), "auto"]
        self.max_parallel = widgets.Dropdown(
            options=limits, value=s.max_parallel_requests, description="Max parallel"
        )
        self.model = widgets.Text(value=self._model_name(), description="Model")
        self.model.disabled = not isinstance(self.llm, LLMConfig)
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", disabled=True)
        self.generate_button.on_click(lambda _b: act(self.generate, "Generate", self._show_message))
        self.stop_button.on_click(lambda _b: act(self.stop, "Stop", self._show_message))
        self.bar = widgets.IntProgress(min=0, max=s.version_count, value=0)
        self.progress = widgets.HTML()
        self.progress.add_class("arboris-progress")
        self.message = widgets.HTML()
        self.message.add_class("arboris-message")
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_gap="8px", width="100%"))
        self.grid.add_class("arboris-panels")
        controls = widgets.VBox(
            [
                self.prompt,
                widgets.HBox([self.count, self.parallel, self.max_parallel, self.model]),
                widgets.HBox([self.generate_button, self.stop_button, self.bar, self.progress]),
            ]
        )
        controls.add_class("arboris-controls")
        self.tabs = self._build_tabs()
        self.root = widgets.VBox(
            [widgets.HTML(_STYLE), controls, self.message, self.grid, self.tabs]
        )
        self.root.add_class("arboris-versions")
        self._make_panels(s.version_count)
        self._render_progress()

    def _build_tabs(self) -> widgets.Tab:
        self.compare = CompareTab(self, on_busy=self._sync_busy)
        self.timeline = widgets.HTML(timeline_html(None))
        self.table = widgets.HTML()
        return widgets.Tab(
            children=[self.compare.box, self.timeline, self.table],
            titles=("Compare", "Timeline", "Data"),
        )

    def _make_panels(self, n: int) -> None:
        self._panels = {}
        for index in range(1, n + 1):
            panel = VersionPanel(index)
            panel.on(select=self._select_clicked, retry=self._retry_clicked, save=self._save)
            self._panels[index] = panel
        self._layout_grid()

    def _layout_grid(self) -> None:
        columns = min(len(self._panels), 3)  # side by side; wraps beyond three
        self.grid.layout.grid_template_columns = f"repeat({columns}, minmax(0, 1fr))"
        self.grid.children = [p.box for p in self._panels.values()]

    def _model_name(self) -> str:
        return str(getattr(self.llm, "model", "") or "")

    # -- display ---------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.root._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)  # stable text, no timings (nbval compares it)
        return bundle

    def __repr__(self) -> str:
        return f"VersionsWidget(versions={len(self._panels)}, model={self._model_name()!r})"

    # -- public API ------------------------------------------------------------------------
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
        found = [v for v in self.run.versions if v.index == self._selected and v.ok]
        return found[0] if found else None

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

        ``prompt`` defaults to the prompt box. Settings come from the controls.
        """
        loop = running_loop("VersionsWidget.generate()")
        if self.busy:
            raise StateError("A run is already in progress: press Stop or wait for it to end")
        if isinstance(prompt, str):
            self.prompt.value = prompt
        messages = as_messages(self.prompt.value if prompt is None else prompt)
        settings = self._settings_from_controls()
        llm = self._llm_for_run()
        self._messages, self.settings = messages, settings
        self._reset(settings.version_count)
        coro = self._generate(messages, settings, llm, project, chapter)
        self.task = loop.create_task(coro, name="arboris-generate")
        self.task.add_done_callback(self._finished_task)
        self._sync_busy()
        return self.task

    def stop(self) -> None:
        """Cancel every in-flight request; finished versions stay, the rest are cancelled."""
        self._stopping = True
        for task in [self.task, *self._jobs]:
            if task is not None and not task.done():
                task.cancel()
        self.compare.cancel()

    def select(self, index: int) -> Version:
        """Mark version ``index`` as the chosen one (only a done version can be chosen)."""
        version = self._version(index)
        if not version.ok:
            raise StateError(
                f"Version {index} is {version.status}: only a done version can be selected"
                + ("; press Retry on its panel first" if version.done else "; wait for it")
            )
        self._selected = index
        for panel in self._panels.values():
            panel.selected = panel.index == index
            panel.render_header(self._now())
        self.compare.follow_selection(version)
        return version

    def retry(self, index: int, instruction: str | None = None) -> asyncio.Task[Version]:
        """Regenerate one version (with an optional extra instruction); returns its task.

        The new version replaces the old one here; the store keeps both (the retry is a
        run of its own, linked to this one: ``arboris_nb.runs.retries_of(run_id)``)."""
        loop = running_loop("VersionsWidget.retry()")
        self._version(index)  # refuses an unknown index (or no run) now, not in the task
        if self.run is None or self.busy:
            raise wait_error("Retry")
        if self._selected == index:
            self._selected = None
        coro = editor.retry_version(
            self.run,
            index,
            self._messages,
            instruction=instruction,
            llm=self._llm_for_run(),
            settings=self.settings,
            retry=self.retry_policy,
            on_event=self._on_event,
        )
        return self._start_job(loop, coro, "Retry", self._after_retry, self._panels[index])

    def edit(self, index: int, text: str) -> Version:
        """Replace version ``index``'s text with ``text`` and mark the panel edited.

        The edit is saved to the run store (the generated text is kept there too)."""
        version = editor.edit_version(self._version(index), text, run=self.run)
        panel = self._panels[index]
        panel.edited, panel.dirty = True, True
        panel.close_editor()
        panel.flush(self._now(), _messages.lang(), header=True)
        self.compare.versions_changed([index])
        self._refresh_data()
        return version

    def diff(self, a: int, b: int) -> str:
        """Word-level diff of versions ``a`` → ``b`` as escaped HTML, also shown."""
        return self.compare.diff(a, b)

    def evaluate(self) -> asyncio.Task[editor.Evaluation]:
        """Ask the judge model to compare the done versions; returns the task."""
        return self.compare.evaluate()

    def export(self, path: str | Path | None = None, *, index: int | None = None) -> Path:
        """Write the selected version (or ``index``) to Markdown; return its full path.

        The name follows the selection (``chapter-5-v2.md``) unless one is given or typed
        in the File box; a bare name goes to ``export_dir``."""
        return self.compare.export(path, index=index)

    # -- the run -------------------------------------------------------------------------
    async def _generate(
        self,
        messages: list[Message],
        settings: WriterSettings,
        llm: LLMConfig | Backend,
        project: str | None,
        chapter: int | None,
    ) -> Run:
        try:
            run = await generate_versions(
                messages,
                settings=settings,
                llm=llm,
                project=project,
                chapter=chapter,
                on_event=self._on_main_event,
                retry=self.retry_policy,
                raise_on_all_failed=False,
            )
        except asyncio.CancelledError:
            # Stop cancels this task; the engine has already marked what was unfinished.
            if self._stopping and self.run is not None:
                return self.run
            self._cancel_panels()  # stopped before the engine started the run
            raise
        except Exception as exc:
            report(exc, "Generation", self._show_message)
            raise
        if not run.ok:
            self._say(f"All {run.version_count} versions failed.")
        return run

    def _finished_task(self, task: asyncio.Task[Any]) -> None:
        # Retrieve the outcome so an error is never "never retrieved"; it was shown already.
        if not task.cancelled():
            task.exception()
        self._stopping = False
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
        """Run a panel's job; its outcome, error or cancellation shows on that panel."""
        try:
            result = await coro
            then(result)
        except asyncio.CancelledError:
            panel.show_note(html.escape(f"{what} cancelled."))
            raise
        except Exception as exc:
            report(exc, what, panel.show_note)
            raise
        return result

    def _after_retry(self, version: Version) -> None:
        panel = self._panels[version.index]
        if version.status == "cancelled":  # editor.retry_version kept the old version
            panel.show_note(html.escape("Retry cancelled: the previous text is kept."))
            return
        word = "done" if version.ok else version.status
        panel.show_note(html.escape(f"Regenerated: {word}."))
        self.compare.versions_changed([version.index])

    # -- events (the widget is a subscriber; it never times or retries anything) --------
    def _on_main_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run = event.run
            self._t0 = asyncio.get_running_loop().time() - event.t
        self._on_event(event)

    def _on_event(self, event: Event) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(event, RunStarted):
            self._live.add(id(event.run))
            self._schedule(loop)
        elif isinstance(event, RunFinished):
            self._live.discard(id(event.run))
            self._flush(loop, final=True)
        elif isinstance(event, VersionEvent):
            self._on_version(event, loop)

    def _on_version(self, event: VersionEvent, loop: asyncio.AbstractEventLoop) -> None:
        panel = self._panels.get(event.version.index)
        if panel is None:
            return
        panel.t0 = loop.time() - event.t
        if isinstance(event, TokenDelta):
            if panel.append(event.text):  # the first token shows at once
                panel.flush(event.t, _messages.lang())
            return
        if isinstance(event, VersionQueued):
            panel.queued(event.version)
        elif isinstance(event, VersionStarted):
            panel.started(event.attempt)
        elif isinstance(event, VersionRetrying):
            panel.retrying()
        elif isinstance(event, VersionFinished | VersionFailed | VersionCancelled):
            panel.finished(event.version)
        # State changes are rare (a few per version): show them now.
        panel.flush(event.t, _messages.lang(), header=True)
        self._render_progress()

    # -- throttled refresh -----------------------------------------------------------------
    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float | None = None) -> None:
        if self._timer is None:
            self._timer = loop.call_later(delay or self._interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        try:
            sent = self._flush(loop, final=False)
        except Exception:  # a display bug must not stop the refresh (nor the run)
            log.exception("widget refresh failed")
            sent = 0
        if self._live:
            # Long texts stretch the interval so the widget resends at most
            # max_chars_per_s characters a second in total.
            self._schedule(loop, max(self._interval, sent / self._max_chars_per_s))

    def _flush(self, loop: asyncio.AbstractEventLoop, *, final: bool) -> int:
        """Write dirty panels; every ~0.25 s (and at the end) also stats and timeline."""
        lang = _messages.lang()
        self._ticks += 1
        slow = final or self._ticks % max(1, round(0.25 / self._interval)) == 0
        sent = 0
        for panel in self._panels.values():
            running = panel.status in {"running", "retrying"}
            sent += panel.flush(loop.time() - panel.t0, lang, header=slow and running)
        if slow:
            self._render_progress()
            self.timeline.value = timeline_html(self.run, self._now())
        if final:
            self._refresh_data()
        return sent

    def _now(self) -> float:
        """Seconds since the main run started (0 before any run)."""
        if self._t0 is None:
            return 0.0
        try:
            return asyncio.get_running_loop().time() - self._t0
        except RuntimeError:
            return (self.run.elapsed_s or 0.0) if self.run else 0.0

    def _render_progress(self) -> None:
        versions = self.run.versions if self.run else []
        done = sum(v.done for v in versions)
        n = len(self._panels)
        failed = sum(v.status == "failed" for v in versions)
        elapsed = self.run.elapsed_s if self.run and self.run.elapsed_s is not None else None
        seconds = elapsed if elapsed is not None else self._now()
        text = f"{done}/{n} done · {seconds:.1f} s" + (f" · {failed} failed" if failed else "")
        with self.bar.hold_sync():
            self.bar.max, self.bar.value = n, done
        self.progress.value = html.escape(text)

    def _refresh_data(self) -> None:
        """Redraw what depends on the finished run: table, timeline, diff choices."""
        if self.run is None:
            return
        self.table.value = self.frame().to_html(index=False, float_format="{:.3f}".format)
        self.timeline.value = timeline_html(self.run, self._now())
        self.compare.refresh(self.run)
        self._render_progress()

    # -- helpers -------------------------------------------------------------------------
    def _reset(self, n: int) -> None:
        self.run, self._selected, self._t0 = None, None, None
        self._stopping = False
        self.message.value = ""
        self.compare.reset(_goal(self._messages))
        if n != len(self._panels):
            self._make_panels(n)
        for panel in self._panels.values():
            panel.version, panel.status, panel.parts = None, "queued", []
            panel.edited = panel.selected = False
            panel.dirty = True
            panel.flush(0.0, header=True)
        self._render_progress()

    def _cancel_panels(self) -> None:
        for panel in self._panels.values():
            if panel.status not in {"ok", "failed"}:
                panel.status, panel.dirty = "cancelled", True
                panel.flush(0.0, header=True)

    def _sync_busy(self) -> None:
        busy = self.busy
        self.generate_button.disabled = busy
        self.stop_button.disabled = not busy
        self.compare.sync_busy(busy)
        for panel in self._panels.values():
            panel.busy = busy
            panel.sync_buttons()

    def _settings_from_controls(self) -> WriterSettings:
        return WriterSettings(
            version_count=self.count.value,
            parallel=self.parallel.value,
            max_parallel_requests=self.max_parallel.value,
        )

    def _llm_for_run(self) -> LLMConfig | Backend:
        model = self.model.value.strip()
        if isinstance(self.llm, LLMConfig) and model and model != self.llm.model:
            return self.llm.with_(model=model)
        return self.llm

    def _version(self, index: int) -> Version:
        return version_of(self.run, index)

    def _say(self, text: str) -> None:
        self.message.value = html.escape(text)

    def _show_message(self, value: str) -> None:
        self.message.value = value

    def _panel_act(self, index: int, action: Callable[[], object], name: str) -> None:
        """A panel button's action; its error shows on that panel, in words."""
        panel = self._panels[index]
        panel.show_note("")
        act(action, name, panel.show_note)

    def _select_clicked(self, index: int) -> None:
        self._panel_act(index, lambda: self.select(index), "Select")

    def _retry_clicked(self, index: int, instruction: str) -> None:
        self._panel_act(index, lambda: self.retry(index, instruction or None), "Retry")

    def _save(self, index: int, text: str) -> None:
        self._panel_act(index, lambda: self.edit(index, text), "Save")


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
