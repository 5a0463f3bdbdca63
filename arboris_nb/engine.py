"""The engine's entry points: start a run, await it, or run it from sync code.

:func:`start_versions` builds the :class:`~arboris_nb.results.Run` (every version
queued), wires the subscribers that need files — the run store first, then the reply
cache — in front of the caller's, and hands the work to a
:class:`~arboris_nb.runner.Runner` on a task owned by the returned
:class:`~arboris_nb.handle.RunHandle`. The runner is the only part that knows about
concurrency, retries and timing, and it knows nothing about files. Everything else —
widget, recorder, store, CLI — subscribes to the events it emits or reads the Run.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from contextlib import ExitStack
from typing import Any, ParamSpec

from .backends.base import Backend, Message
from .cache import CacheSpec, bind_cache
from .config import LLMConfig, WriterSettings, load_api_keys, load_env
from .errors import ConfigError
from .events import EventHandler
from .handle import RunHandle
from .limit_memory import endpoint_key
from .limits import Limiter, make_limiter
from .pricing import Price, PriceSpec, price_for, price_table
from .prompts import as_messages
from .results import Run, Version
from .retry import RetryPolicy
from .runner import Runner
from .store import StoreSpec, open_recorder

__all__ = [
    "Handlers",
    "LLMArg",
    "generate_versions",
    "generate_versions_sync",
    "resolve_backend",
    "resolve_price",
    "start_versions",
]

Handlers = EventHandler | Sequence[EventHandler] | None


LLMArg = LLMConfig | Backend | Sequence[LLMConfig] | None
P = ParamSpec("P")


def resolve_backend(llm: LLMArg) -> Backend:
    """An ``LLMConfig`` becomes an ``OpenAIBackend``, a list of them (or several keys in
    ``OPENAI_API_KEYS``) a ``KeyPool``; a backend object is used as is."""
    if isinstance(llm, Backend):
        return llm
    # Imported only now: they load the openai package, which a simulated run never needs.
    from .backends.openai import OpenAIBackend
    from .backends.pool import KeyPool

    if llm is None:
        env = load_env()
        if len(load_api_keys(env)) > 1:
            return KeyPool.from_env(env)
        llm = LLMConfig.from_env(env)
    if isinstance(llm, list | tuple):
        return KeyPool(llm)
    if isinstance(llm, LLMConfig):
        if not llm.configured:
            raise ConfigError(
                "no API configured: set OPENAI_API_KEY or OPENAI_API_BASE_URL "
                "(or pass llm=SimulatedLLM() to run offline)"
            )
        return OpenAIBackend(llm)
    raise ConfigError(f"llm must be an LLMConfig or a backend, got {type(llm).__name__}")


def _handlers(on_event: Handlers) -> list[EventHandler]:
    if on_event is None:
        return []
    if callable(on_event):
        return [on_event]
    return list(on_event)


def _indices(settings: WriterSettings, indices: Sequence[int] | None) -> list[int]:
    """The versions to start: ``version_count`` and the ``extra_versions`` after them, or
    exactly ``indices`` (a retry or a resume regenerates those, no extras)."""
    if indices is None:
        return list(range(1, settings.version_count + settings.extra_versions + 1))
    chosen = sorted(set(indices))
    if not chosen or chosen[0] < 1:
        raise ConfigError(f"version indices must be 1 or more, got {list(indices)}")
    return chosen


def start_versions(
    prompt: str | Sequence[Message],
    *,
    settings: WriterSettings | None = None,
    llm: LLMArg = None,
    project: str | None = None,
    chapter: int | None = None,
    on_event: Handlers = None,
    retry: RetryPolicy | None = None,
    limiter: Limiter | None = None,
    indices: Sequence[int] | None = None,
    run_id: str | None = None,
    raise_on_all_failed: bool = True,
    store: StoreSpec = None,
    cache: CacheSpec = None,
    refresh: bool = False,
    prices: PriceSpec = None,
) -> RunHandle:
    """Start generating ``settings.version_count`` versions of ``prompt``; return at once.

    With ``settings.extra_versions`` k, k more are started and the first
    ``version_count`` to finish are kept: the rest are cancelled (reason ``surplus``).
    A run of explicit ``indices`` starts exactly those (no extras).
    ``retry`` may hedge slow requests (``RetryPolicy(hedge_after_s=…)``).

    The returned :class:`~arboris_nb.handle.RunHandle` has the :class:`Run` as
    ``handle.run`` straight away (its id, every version ``queued``), live while it
    streams; ``handle.cancel()`` stops it; ``await handle`` returns the finished Run. A
    failed version becomes ``status="failed"`` with its error; only when every version
    failed does awaiting raise :class:`AllVersionsFailed` (it carries the Run; not with
    ``raise_on_all_failed=False``). Needs a running event loop (a notebook cell, an async
    function). Bad settings raise :class:`ConfigError` here, before anything starts.

    ``indices`` generates only those version numbers (retry, resume); ``limiter`` shares
    one concurrency limit between several runs. ``store``: each version is saved as it
    finishes (None = ``ARBORIS_STORE`` or the default file, False = off, a path or a
    ``RunStore``; see ``docs/persistence.md``). ``cache``: opt-in reply cache (None =
    ``ARBORIS_CACHE``/``ARBORIS_CACHE_URL``, False = bypass, True, a URL/path or a
    ``ReplyCache``); ``refresh=True`` skips look-ups but still stores the new replies.
    ``prices``: the model's price for each attempt's ``cost`` — a mapping model →
    :class:`~arboris_nb.pricing.Price` or a TOML/JSON file (None = ``ARBORIS_PRICES``);
    an ``LLMConfig``'s own ``price_in``/``price_out`` win (see ``arboris_nb.pricing``).

    The run's first events (and the store's run row) come when the loop next runs, so
    fields set on ``handle.run`` right after this call, such as ``parent_run_id``, are
    part of the stored run.
    """
    _require_running_loop()  # before anything is opened
    settings = settings or WriterSettings.from_env()
    messages = as_messages(prompt)
    backend = resolve_backend(llm)
    endpoint = endpoint_key(backend)  # auto starts from what it learned there (limit_memory)
    limiter = limiter or make_limiter(settings.max_parallel_requests, endpoint=endpoint)
    temperature, max_tokens = _sampling(llm)
    price = resolve_price(llm, backend, prices)
    run = _new_run(settings, limiter, backend, indices, run_id, project, chapter)
    with ExitStack() as opened:  # closes what was opened if a later step fails
        recorder = open_recorder(store, messages, temperature=temperature, max_tokens=max_tokens)
        if recorder is not None:
            opened.callback(recorder.close)
        bound = bind_cache(
            cache,
            backend=backend,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            refresh=refresh,
        )
        if bound is not None:
            opened.callback(bound.close)
        # The store hears every event first: a version is on disk before anyone else sees it.
        first = [h for h in (recorder, bound) if h is not None]
        runner = Runner(
            run,
            messages,
            backend=backend,
            limiter=limiter,
            retry=retry or RetryPolicy(),
            handlers=[*first, *_handlers(on_event)],
            temperature=temperature,
            max_tokens=max_tokens,
            known=None if bound is None else bound.lookup,
            fanout=settings.fanout,
            price=price,
        )
        closers = opened.pop_all()
    return RunHandle(runner, raise_on_all_failed=raise_on_all_failed, closers=[closers.close])


def _awaited(start: Callable[P, RunHandle]) -> Callable[P, Coroutine[Any, Any, Run]]:
    """``start`` awaited: the same arguments (one signature, kept in one place)."""

    @functools.wraps(start)
    async def awaited(*args: P.args, **kwargs: P.kwargs) -> Run:
        return await start(*args, **kwargs)

    return awaited


generate_versions = _awaited(start_versions)
generate_versions.__name__ = generate_versions.__qualname__ = "generate_versions"
generate_versions.__doc__ = """Generate the versions and return the finished Run.

    ``await generate_versions(...)`` is ``await start_versions(...)``: the same arguments
    (see :func:`start_versions`). Cancelling the awaiting task cancels the run: finished
    versions are kept, the rest are marked ``cancelled``, and ``CancelledError`` is
    re-raised.
    """


def _require_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "start_versions needs a running event loop (a notebook cell or an async "
            "function); in a plain script use generate_versions_sync(...)"
        ) from None


def _config(llm: LLMArg) -> LLMConfig | None:
    """The LLMConfig the run is asked with (a pool's first), if any."""
    config = llm[0] if isinstance(llm, list | tuple) and llm else llm
    return config if isinstance(config, LLMConfig) else None


def _sampling(llm: LLMArg) -> tuple[float, int | None]:
    """Temperature and max_tokens of the request: the config's, else the defaults."""
    config = _config(llm)
    if config is not None:
        return config.temperature, config.max_tokens
    return LLMConfig.temperature, None


def resolve_price(llm: LLMArg, backend: Backend, prices: PriceSpec = None) -> Price | None:
    """The run's price: the LLMConfig's own, else the model's in ``prices`` (or the
    ``ARBORIS_PRICES`` file); None when unknown. Bad prices raise ConfigError."""
    config = _config(llm)
    if config is not None and config.price is not None:
        return config.price
    return price_for(getattr(backend, "model", None), price_table(prices, load_env()))


def _new_run(
    settings: WriterSettings,
    limiter: Limiter,
    backend: Backend,
    indices: Sequence[int] | None,
    run_id: str | None,
    project: str | None,
    chapter: int | None,
) -> Run:
    chosen = _indices(settings, indices)
    extra = settings.extra_versions if indices is None else 0
    return Run(
        run_id=run_id or uuid.uuid4().hex[:12],
        versions=[Version(index=i) for i in chosen],
        keep=len(chosen) - extra,
        extra_versions=extra,
        parallel=settings.parallel,
        # The limiter in use sets C for the record (it may be shared, or above 10).
        max_parallel_requests="auto" if getattr(limiter, "adaptive", False) else limiter.limit,
        project=project,
        chapter=chapter,
        model=getattr(backend, "model", None),
        created_at=time.time(),
    )


def generate_versions_sync(prompt: str | Sequence[Message], **kwargs: Any) -> Run:
    """Blocking :func:`generate_versions`; inside a running loop it uses a worker thread."""
    from ._sync import run_sync

    return run_sync(generate_versions(prompt, **kwargs))
