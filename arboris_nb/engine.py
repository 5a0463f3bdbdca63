"""The engine: N versions of one prompt, in parallel under a limiter or one by one.

This is the only module that knows about concurrency, retries and timing. Each version
is its own task; ``gather(return_exceptions=True)`` collects them so a failing version
never cancels the others. Everything else — widget, recorder, store, CLI — subscribes to
the events emitted here or reads the returned :class:`~arboris_nb.results.Run`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _messages
from .backends.base import (
    Backend,
    ChatRequest,
    Connection,
    Message,
    Served,
    Usage,
    closing_stream,
)
from .backends.openai import OpenAIBackend
from .backends.pool import KeyPool
from .cache import BoundCache, CacheSpec, bind_cache
from .config import LLMConfig, WriterSettings, load_api_keys, load_env
from .errors import AllVersionsFailed, BackendError, BackendTimeout, ConfigError, ServerError
from .events import (
    Event,
    EventHandler,
    LimitChanged,
    RunFinished,
    RunStarted,
    TokenDelta,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from .limits import Limiter, make_limiter
from .pacing import ready
from .prompts import as_messages, parse_reply
from .results import Attempt, Run, Version
from .retry import RetryPolicy
from .store import CACHE_KEY_ID, StoreSpec, open_recorder

if sys.version_info >= (3, 11):
    from asyncio import timeout_at as _timeout_at
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout_at as _timeout_at

__all__ = ["generate_versions", "generate_versions_sync", "resolve_backend"]

log = logging.getLogger("arboris_nb")

Handlers = EventHandler | Sequence[EventHandler] | None


LLMArg = LLMConfig | Backend | Sequence[LLMConfig] | None


def resolve_backend(llm: LLMArg) -> Backend:
    """An ``LLMConfig`` becomes an ``OpenAIBackend``, a list of them (or several keys in
    ``OPENAI_API_KEYS``) a ``KeyPool``; a backend object is used as is."""
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
    if isinstance(llm, Backend):
        return llm
    raise ConfigError(f"llm must be an LLMConfig or a backend, got {type(llm).__name__}")


@dataclass
class _Outcome:
    text: str
    tokens: int
    from_usage: bool


class _Runner:
    """One run: the shared state of its version tasks."""

    def __init__(
        self,
        run: Run,
        messages: list[Message],
        *,
        backend: Backend,
        limiter: Limiter,
        retry: RetryPolicy,
        handlers: list[EventHandler],
        temperature: float,
        max_tokens: int | None,
    ) -> None:
        self.run = run
        self.messages = messages
        self.backend = backend
        self.limiter = limiter
        self.retry = retry
        self.handlers = handlers
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.rng = random.Random(retry.seed)
        self.tasks: list[asyncio.Task[None]] = []
        self.cache: BoundCache | None = None

    # -- plumbing ---------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time() - self.t0

    def emit(self, cls: Callable[..., Event], **fields: Any) -> None:
        if not self.handlers:
            return
        event = cls(run=self.run, t=self.now(), **fields)
        for handler in self.handlers:
            try:
                handler(event)
            except Exception:  # a broken subscriber must not break generation
                log.exception("on_event handler %r failed on %s", handler, type(event).__name__)

    def _say(self, key: str, version: Version, **values: object) -> None:
        log.info(_messages.text(key, i=version.index, n=self.run.version_count, **values))

    # -- the run ----------------------------------------------------------------------
    async def go(self) -> None:
        """The whole run: announce it, open the backend, run the versions, close."""
        run = self.run
        log.info(
            _messages.text(
                "plan",
                project=run.project,
                chapter=run.chapter,
                n=run.version_count,
                parallel=run.parallel,
            )
        )
        self.emit(RunStarted)
        try:
            async with self.backend.open() as conn:
                await self.execute(conn)
        finally:
            run.elapsed_s = self.now()
            log.info(_messages.text("done", s=run.elapsed_s, parallel=run.parallel))
            self.emit(RunFinished)

    async def execute(self, conn: Connection) -> None:
        for version in self.run.versions:
            version.queued_at = self.now()
            self.emit(VersionQueued, version=version)
        if self.run.parallel:
            self.emit(LimitChanged, limit=self.limiter.limit)  # where the limit trace starts
            self.tasks = [asyncio.ensure_future(self.one(conn, v)) for v in self.run.versions]
        else:
            self.tasks = [asyncio.ensure_future(self.serial(conn))]
        self.run._cancel = self.cancel
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.run._cancel = None
            self.close_unfinished()

    async def serial(self, conn: Connection) -> None:
        for version in self.run.versions:
            await self.one(conn, version)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    def close_unfinished(self) -> None:
        """Anything not finished when the run ends was cancelled (serial leftovers)."""
        for version in self.run.versions:
            if not version.done:
                self.mark_cancelled(version)

    def mark_cancelled(self, version: Version) -> None:
        version.status = "cancelled"
        version.content = None
        version.finished_at = self.now()
        if version.attempt_log and version.attempt_log[-1].finished_at is None:
            version.attempt_log[-1].finished_at = version.finished_at
            version.attempt_log[-1].error_type = "CancelledError"
        self._say("cancel", version)
        self.emit(VersionCancelled, version=version)

    # -- one version ------------------------------------------------------------------
    async def one(self, conn: Connection, version: Version) -> None:
        if self.replay(version):
            return
        try:
            await self.attempts(conn, version)
        except asyncio.CancelledError:
            self.mark_cancelled(version)
            raise
        except Exception as exc:  # a backend bug fails this version, not the batch
            self.fail(version, exc)

    def replay(self, version: Version) -> bool:
        """Answer from the reply cache: no request, no attempt, no timings but the finish."""
        reply = self.cache.lookup(version.index) if self.cache else None
        if reply is None:
            return False
        version.content, version.title, version.summary = reply.content, reply.title, reply.summary
        version.output_tokens = reply.output_tokens
        version.key_id = CACHE_KEY_ID
        version.finished_at = self.now()
        version.status = "ok"
        self.emit(VersionFinished, version=version)
        return True

    async def attempts(self, conn: Connection, version: Version) -> None:
        for number in range(1, self.retry.attempts + 1):
            async with self.limiter.slot():
                request = self.request(version, number)
                # Pacing waits (rate-limit budget, Retry-After gate) are queue time, not
                # part of the attempt: they count toward neither TTFT nor a stall.
                await ready(conn, request)
                attempt = self.begin(version, number)
                try:
                    outcome = await self.attempt(conn, version, attempt, request)
                except BackendError as exc:
                    error: BackendError = exc
                    # Inside the slot: an adaptive limiter must hear of a 429 before the
                    # slot it frees is handed to the next request (else 429s cascade).
                    self.observe(
                        ok=False,
                        rate_limited=exc.status == 429,
                        ttft_s=None,
                        retry_after_s=exc.retry_after_s,
                    )
                else:
                    self.observe(ok=True, rate_limited=False, ttft_s=version.ttft_s)
                    self.succeed(version, attempt, outcome)
                    return
            # Outside the slot: a waiting retry must not hold a concurrency slot.
            self.end_attempt(attempt, error)
            if not self.retry.should_retry(error, number):
                self.fail(version, error)
                return
            delay = self.retry.delay(number, error, self.rng)
            if self.past_deadline(version, delay):
                self.fail(version, self.deadline_error(error))
                return
            await self.wait_retry(version, attempt, error, delay)

    def deadline_error(self, error: BackendError) -> BackendError:
        if isinstance(error, BackendTimeout) and "deadline" in str(error):
            return error
        return BackendTimeout(
            f"version deadline of {self.retry.deadline_s:g} s (RetryPolicy.deadline_s) "
            f"leaves no time to retry; last error: {error}",
            status=error.status,
        )

    def observe(
        self,
        *,
        ok: bool,
        rate_limited: bool,
        ttft_s: float | None,
        retry_after_s: float | None = None,
    ) -> None:
        """Tell the limiter how an attempt went; announce a limit it moved."""
        before = self.limiter.limit
        note_retry_after = getattr(self.limiter, "note_retry_after", None)
        if retry_after_s is not None and note_retry_after is not None:
            note_retry_after(retry_after_s)  # an adaptive limit weighs what a probe costs
        self.limiter.observe(ok=ok, rate_limited=rate_limited, ttft_s=ttft_s)
        if self.limiter.limit != before:
            self.emit(LimitChanged, limit=self.limiter.limit)

    def begin(self, version: Version, number: int) -> Attempt:
        now = self.now()
        if version.started_at is None:
            version.started_at = now
            self._say("start", version)
        attempt = Attempt(number=number, started_at=now)
        version.attempt_log.append(attempt)
        version.attempts = number
        version.status = "running"
        version.first_token_at = None
        self.emit(VersionStarted, version=version, attempt=number)
        return attempt

    def end_attempt(self, attempt: Attempt, error: BackendError | None) -> None:
        attempt.finished_at = self.now()
        if error is not None:
            attempt.error_type = type(error).__name__
            attempt.status_code = error.status
            attempt.retry_after_s = error.retry_after_s

    async def wait_retry(
        self, version: Version, attempt: Attempt, error: BackendError, delay: float
    ) -> None:
        attempt.wait_s = delay
        version.status = "retrying"
        self._say("retry", version, attempt=attempt.number, error=error, delay=delay)
        self.emit(
            VersionRetrying,
            version=version,
            attempt=attempt.number,
            error=str(error),
            delay_s=delay,
        )
        await asyncio.sleep(delay)

    def past_deadline(self, version: Version, wait_s: float = 0.0) -> bool:
        """True when the deadline has passed, or would before a retry after ``wait_s``."""
        left = self.time_left(version)
        return left is not None and left <= wait_s

    def time_left(self, version: Version) -> float | None:
        if self.retry.deadline_s is None or version.started_at is None:
            return None
        return self.retry.deadline_s - (self.now() - version.started_at)

    def request(self, version: Version, number: int) -> ChatRequest:
        return ChatRequest(
            messages=self.messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            run_id=self.run.run_id,
            version_index=version.index,
            attempt=number,
        )

    async def attempt(
        self, conn: Connection, version: Version, attempt: Attempt, request: ChatRequest
    ) -> _Outcome:
        """One request. Its partial text is private to it, so a retry never mixes texts."""
        left = self.time_left(version)
        stall = self.retry.stall_s
        deadline = None if left is None else self.loop.time() + left
        try:
            async with _timeout_at(self._next_deadline(deadline, stall)) as guard:
                return await self.consume(conn, request, version, guard, deadline, stall)
        except TimeoutError:
            if deadline is not None and self.loop.time() >= deadline - 1e-9:
                raise BackendTimeout(
                    f"version deadline of {self.retry.deadline_s:g} s passed"
                ) from None
            raise BackendTimeout(f"no token for {stall:g} s (stalled)") from None

    def _next_deadline(self, deadline: float | None, stall: float | None) -> float | None:
        """Loop time at which the attempt is abandoned: the earlier of deadline and stall."""
        stall_at = None if stall is None else self.loop.time() + stall
        limits = [t for t in (deadline, stall_at) if t is not None]
        return min(limits) if limits else None

    async def consume(
        self,
        conn: Connection,
        request: ChatRequest,
        version: Version,
        guard: Any,
        deadline: float | None,
        stall: float | None,
    ) -> _Outcome:
        parts: list[str] = []
        usage: Usage | None = None
        # aclosing: an abandoned stream (stall, cancel) closes its HTTP response now,
        # not whenever the garbage collector finalizes the generator.
        async with closing_stream(conn.stream(request)) as stream:
            async for item in stream:
                if isinstance(item, str):
                    if version.first_token_at is None:
                        version.first_token_at = self.now()
                    parts.append(item)
                    if stall is not None:
                        guard.reschedule(self._next_deadline(deadline, stall))
                    self.emit(TokenDelta, version=version, text=item)
                elif isinstance(item, Usage):
                    usage = item
                elif isinstance(item, Served):
                    version.key_id = item.key_id
        text = "".join(parts)
        if not text.strip():
            raise ServerError("the model returned an empty reply")
        if usage is not None and usage.output_tokens > 0:
            return _Outcome(text, usage.output_tokens, True)
        return _Outcome(text, len(parts), False)

    def succeed(self, version: Version, attempt: Attempt, outcome: _Outcome) -> None:
        self.end_attempt(attempt, None)
        parsed = parse_reply(outcome.text)
        version.content, version.title, version.summary = (
            parsed.content,
            parsed.title,
            parsed.summary,
        )
        version.output_tokens = outcome.tokens
        version.tokens_from_usage = outcome.from_usage
        version.finished_at = self.now()
        version.status = "ok"
        version.error = version.error_type = None
        self._say(
            "finish",
            version,
            s=version.duration_s or 0.0,
            tokens=version.output_tokens,
            attempts=version.attempts,
        )
        self.emit(VersionFinished, version=version)

    def fail(self, version: Version, error: BaseException) -> None:
        version.status = "failed"
        version.content = None
        version.error = str(error) or type(error).__name__
        version.error_type = type(error).__name__
        version.finished_at = self.now()
        if version.attempt_log and version.attempt_log[-1].finished_at is None:
            version.attempt_log[-1].finished_at = version.finished_at
            version.attempt_log[-1].error_type = version.error_type
        log.warning(
            _messages.text("fail", i=version.index, n=self.run.version_count, error=version.error)
        )
        self.emit(VersionFailed, version=version)


def _handlers(on_event: Handlers) -> list[EventHandler]:
    if on_event is None:
        return []
    if callable(on_event):
        return [on_event]
    return list(on_event)


def _indices(settings: WriterSettings, indices: Sequence[int] | None) -> list[int]:
    if indices is None:
        return list(range(1, settings.version_count + 1))
    chosen = sorted(set(indices))
    if not chosen or chosen[0] < 1:
        raise ConfigError(f"version indices must be 1 or more, got {list(indices)}")
    return chosen


async def generate_versions(
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
) -> Run:
    """Generate ``settings.version_count`` versions of ``prompt`` and return the Run.

    A failed version becomes ``status="failed"`` with its error; only when every version
    failed is :class:`AllVersionsFailed` raised (it carries the Run). Cancelling the
    awaiting task (or calling ``run.cancel()``) keeps finished versions and marks the rest
    ``cancelled``. ``indices`` generates only those version numbers (retry, resume);
    ``limiter`` shares one concurrency limit between several runs.

    ``store``: each version is saved as it finishes (None = ``ARBORIS_STORE`` or the
    default file, False = off, a path or a ``RunStore``; see ``docs/persistence.md``).
    ``cache``: opt-in reply cache (None = ``ARBORIS_CACHE``/``ARBORIS_CACHE_URL``, False =
    bypass, True, a URL/path or a ``ReplyCache``); ``refresh=True`` skips look-ups but
    still stores the new replies.
    """
    settings = settings or WriterSettings.from_env()
    messages = as_messages(prompt)
    backend = resolve_backend(llm)
    limiter = limiter or make_limiter(settings.max_parallel_requests)
    temperature, max_tokens = _sampling(llm)
    run = _new_run(settings, limiter, backend, indices, run_id, project, chapter)
    runner = _Runner(
        run,
        messages,
        backend=backend,
        limiter=limiter,
        retry=retry or RetryPolicy(),
        handlers=_handlers(on_event),
        temperature=temperature,
        max_tokens=max_tokens,
    )
    runner.cache = bind_cache(
        cache,
        backend=backend,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        refresh=refresh,
    )
    recorder = open_recorder(store, messages, temperature=temperature, max_tokens=max_tokens)
    # The store hears every event first: a version is on disk before anyone else sees it.
    runner.handlers[:0] = [h for h in (recorder, runner.cache) if h is not None]
    await runner.go()
    if raise_on_all_failed and run.versions and all(v.status == "failed" for v in run.versions):
        raise AllVersionsFailed(run)
    return run


def _sampling(llm: LLMArg) -> tuple[float, int | None]:
    """Temperature and max_tokens of the request: the config's, else the defaults."""
    config = llm[0] if isinstance(llm, list | tuple) and llm else llm
    if isinstance(config, LLMConfig):
        return config.temperature, config.max_tokens
    return LLMConfig.temperature, None


def _new_run(
    settings: WriterSettings,
    limiter: Limiter,
    backend: Backend,
    indices: Sequence[int] | None,
    run_id: str | None,
    project: str | None,
    chapter: int | None,
) -> Run:
    return Run(
        run_id=run_id or uuid.uuid4().hex[:12],
        versions=[Version(index=i) for i in _indices(settings, indices)],
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
