"""The IPython extension: ``%load_ext arboris_nb`` registers the ``%%arboris`` magic.

    %%arboris -n 3 -c 2 -o chapter3
    Write chapter 3: the lantern-keeper finds the letter.

    %arboris --load RUN_ID -o chapter3

The cell body is the prompt. The magic displays a :class:`VersionsWidget`, schedules
the run on the kernel's loop and returns at once (other cells run while it streams).
``-o NAME`` stores the widget as ``NAME_widget`` right away and the Run as ``NAME``
when it finishes. Bad options are a ``UsageError`` naming the option and its range;
with no API configured the offline simulated model is used, and the magic says so.
As a line magic, ``--load RUN_ID`` reopens a stored run in the widget
(:meth:`VersionsWidget.load`: texts, edits, retries, notes, selection, last evaluation);
an unknown id, or a store from a newer arboris_nb, is a ``UsageError`` saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .backends.base import Backend
from .config import LLMConfig, WriterSettings, parse_count, parse_limit
from .editor import simulated_judge
from .errors import ConfigError

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .results import Run
    from .widgets import VersionsWidget

__all__ = ["ArborisMagics", "load_ipython_extension", "unload_ipython_extension"]

T = TypeVar("T")

SIMULATED_NOTE = (
    "No API configured (OPENAI_API_KEY / OPENAI_API_BASE_URL): using the offline simulated model."
)


def _option(
    parse: Callable[[str, str, object], T], option: str, env: str, raw: str | None
) -> T | None:
    """Parse an option with the config's own parser; its error names the option."""
    if raw is None:
        return None
    try:
        return parse(option, env, raw)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


@magics_class
class ArborisMagics(Magics):
    """``%%arboris``: generate versions of the cell's prompt in a live widget."""

    @magic_arguments()
    @argument("-n", "--versions", help="versions to write, 1-10 (default: WRITER_* settings)")
    @argument("-c", "--max-parallel", help="requests at once, 1-10 or auto")
    @argument("--serial", action="store_true", help="one version after another")
    @argument("--model", help="model name (overrides OPENAI_MODEL_NAME)")
    @argument("--base-url", help="OpenAI-compatible base URL (overrides OPENAI_API_BASE_URL)")
    @argument("--simulated", action="store_true", help="use the offline simulated model")
    @argument("-o", "--output", metavar="NAME", help="store the Run as NAME when it finishes")
    @argument("--load", metavar="RUN_ID", help="reopen a stored run (line magic: %%arboris)")
    @line_cell_magic
    def arboris(self, line: str, cell: str | None = None) -> None:
        """Generate versions of the cell's prompt, or reopen a stored run (``--load``)."""
        args = parse_argstring(self.arboris, line)
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"-o/--output must be a Python name, got {args.output!r}")
        if cell is None or args.load is not None:
            self._load(args, cell)
            return
        prompt = cell.strip()
        if not prompt:
            raise UsageError("%%arboris: the cell body (the prompt) is empty")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError(
                "%%arboris needs a running event loop (a Jupyter kernel); "
                "in a script use arboris_nb.generate_versions_sync"
            ) from None
        settings = self._settings(args)
        llm = self._llm(args)
        self._start(prompt, settings, llm, args.output)

    def _load(self, args: Any, cell: str | None) -> VersionsWidget:
        """``%arboris --load RUN_ID [-o NAME]``: the stored run in a widget (and NAME)."""
        from IPython.display import display

        from .widgets import VersionsWidget

        if args.load is None or (cell is not None and cell.strip()):
            raise UsageError(
                "%arboris takes --load RUN_ID (reopen a stored run); to generate, use "
                "%%arboris with the prompt as the cell body"
            )
        llm = self._llm(args) if args.simulated or args.model or args.base_url else None
        try:
            widget = VersionsWidget.load(args.load, llm=llm)
        except ConfigError as exc:  # unknown id, newer store: say so, change nothing
            raise UsageError(str(exc)) from None
        if args.output and self.shell is not None:
            self.shell.user_ns[f"{args.output}_widget"] = widget
            self.shell.user_ns[args.output] = widget.run
        display(widget)
        return widget

    def _settings(self, args: Any) -> WriterSettings:
        count = _option(parse_count, "-n/--versions", "WRITER_CHAPTER_VERSION_COUNT", args.versions)
        limit = _option(
            parse_limit, "-c/--max-parallel", "WRITER_MAX_PARALLEL_REQUESTS", args.max_parallel
        )
        try:
            return WriterSettings.from_env(
                version_count=count,
                max_parallel_requests=limit,
                parallel=False if args.serial else None,
            )
        except ConfigError as exc:  # a bad WRITER_* variable: say which, no traceback
            raise UsageError(str(exc)) from None

    def _llm(self, args: Any) -> LLMConfig | Backend:
        if args.simulated:
            return simulated_judge()
        try:
            config = LLMConfig.from_env(model=args.model, base_url=args.base_url)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config.configured:
            return config
        print(SIMULATED_NOTE)
        return simulated_judge()

    def _start(
        self,
        prompt: str,
        settings: WriterSettings,
        llm: LLMConfig | Backend,
        name: str | None,
    ) -> VersionsWidget:
        from IPython.display import display

        from .widgets import VersionsWidget

        widget = VersionsWidget(llm=llm, settings=settings, prompt=prompt)
        user_ns = self.shell.user_ns if self.shell is not None else {}
        if name:
            user_ns[f"{name}_widget"] = widget
        display(widget)
        task = widget.generate()

        def store(done: asyncio.Task[Run]) -> None:
            if name and not done.cancelled() and done.exception() is None:
                user_ns[name] = done.result()

        task.add_done_callback(store)
        return widget


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Called by ``%load_ext arboris_nb``."""
    ipython.register_magics(ArborisMagics)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Called by ``%unload_ext arboris_nb``: removes the ``%%arboris`` magic."""
    for kind in ("cell", "line"):
        ipython.magics_manager.magics[kind].pop("arboris", None)
