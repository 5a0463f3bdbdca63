"""What a book job is (:class:`BookSpec`) and how one unit — one version of one chapter —
is generated (:func:`run_unit`), the same way in the kernel and in a Celery worker.

A spec is plain JSON so it can be stored and sent through a broker. It never holds an API
key: an ``LLMConfig`` travels as its public fields plus the *name* of the environment
variable holding the key, and each worker reads the key from its own environment.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..backends.base import Backend, Message
from ..backends.simulated import SimulatedLLM
from ..config import COUNT_RANGE, LLMConfig, WriterSettings
from ..engine import start_versions
from ..errors import ConfigError
from ..events import EventHandler
from ..handle import RunHandle
from ..pricing import PRICE_FIELDS
from ..results import Version
from ..retry import RetryPolicy
from ..store import RunStore
from .records import BookRecords, chapter_run_id

__all__ = ["BookSpec", "backend_from_spec", "llm_spec", "run_unit"]

_SIM_FIELDS = ("ttft_s", "tokens_per_s", "output_tokens", "jitter", "seed", "fail_rate", "model")


def llm_spec(
    llm: LLMConfig | Backend | None, *, api_key_env: str = "OPENAI_API_KEY"
) -> dict[str, Any]:
    """The JSON form of ``llm`` (no key). ``portable`` is False when only this process
    can rebuild it (a custom backend object, a simulated reply function)."""
    if llm is None:
        llm = LLMConfig.from_env(api_key_env=api_key_env)
    if isinstance(llm, LLMConfig):
        public = {f.name: getattr(llm, f.name) for f in dataclasses.fields(llm)}
        public.pop("api_key")
        return {"kind": "openai", "api_key_env": api_key_env, "portable": True, **public}
    if isinstance(llm, SimulatedLLM):
        spec: dict[str, Any] = {f: getattr(llm, f) for f in _SIM_FIELDS}
        spec.update(
            kind="simulated",
            fail_versions=sorted(llm.fail_versions),
            fail_error=llm.fail_error.__name__,
            reply=llm.reply if isinstance(llm.reply, str) else None,
            portable=not callable(llm.reply),
        )
        return spec
    if isinstance(llm, Backend):
        return {"kind": "custom", "model": getattr(llm, "model", None), "portable": False}
    raise ConfigError(f"llm must be an LLMConfig or a backend, got {type(llm).__name__}")


def backend_from_spec(spec: dict[str, Any]) -> LLMConfig | Backend:
    """Rebuild the model from :func:`llm_spec`; an ``openai`` spec reads its key from
    this process's environment (``api_key_env``)."""
    kind = spec.get("kind")
    if kind == "openai":
        names = ("base_url", "model", "temperature", "max_tokens", "timeout_s", *PRICE_FIELDS)
        fields = {k: spec.get(k) for k in names}  # a spec from before prices has none
        return LLMConfig.from_env(api_key_env=spec["api_key_env"], **fields)
    if kind == "simulated":
        error = getattr(errors, str(spec.get("fail_error")), errors.ServerError)
        return SimulatedLLM(
            **{f: spec[f] for f in _SIM_FIELDS},
            fail_versions=tuple(spec.get("fail_versions", ())),
            fail_error=error,
            reply=spec.get("reply"),
        )
    raise ConfigError(
        f"this job's model ({kind!r}) exists only in the process that created it; "
        "pass llm= again to resume it"
    )


@dataclass(frozen=True)
class BookSpec:
    """Everything needed to generate any unit of a job (JSON-ready, no secrets)."""

    job_id: str
    project: str | None
    chapters: tuple[int, ...]
    versions: int
    prompts: dict[int, list[Message]]
    llm: dict[str, Any]
    limit: int
    limit_name: str = "default"
    retry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        low, high = COUNT_RANGE
        if isinstance(self.versions, bool) or not isinstance(self.versions, int):
            raise ConfigError(f"versions_per_chapter must be a whole number {low}–{high}")
        if not low <= self.versions <= high:
            raise ConfigError(
                f"versions_per_chapter must be from {low} to {high}, got {self.versions}"
            )
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigError(
                f"limit (global concurrency) must be a whole number >= 1, got {self.limit!r}"
            )
        if not self.chapters:
            raise ConfigError("chapters must name at least one chapter")
        missing = [c for c in self.chapters if c not in self.prompts]
        if missing:
            raise ConfigError(f"no prompt for chapter(s) {missing}")

    def units(self) -> list[tuple[int, int]]:
        return [(c, v) for c in self.chapters for v in range(1, self.versions + 1)]

    def run_id(self, chapter: int) -> str:
        return chapter_run_id(self.job_id, chapter)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(**self.retry)

    def to_dict(self, chapters: Sequence[int] | None = None) -> dict[str, Any]:
        """JSON form; ``chapters`` keeps only those prompts (a task's payload)."""
        data = dataclasses.asdict(self)
        keep = self.chapters if chapters is None else chapters
        data["chapters"] = list(self.chapters)
        data["prompts"] = {str(c): self.prompts[c] for c in keep}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BookSpec:
        prompts = {int(c): list(m) for c, m in data["prompts"].items()}
        return cls(
            **{**data, "chapters": tuple(int(c) for c in data["chapters"]), "prompts": prompts}
        )

    def for_chapter(self, chapter: int) -> BookSpec:
        """This spec with only ``chapter``'s prompt (what a worker needs for one unit)."""
        return dataclasses.replace(
            self, chapters=(chapter,), prompts={chapter: self.prompts[chapter]}
        )


def _store(store: RunStore | None, records: BookRecords | None) -> RunStore | bool:
    if store is not None:
        return store
    return False if records is None else records.store


def _settings(spec: BookSpec) -> WriterSettings:
    # The engine only records max_parallel_requests here; the shared limiter decides.
    return WriterSettings(
        version_count=spec.versions, parallel=True, max_parallel_requests=min(spec.limit, 10)
    )


async def run_unit(
    spec: BookSpec,
    chapter: int,
    version: int,
    *,
    llm: LLMConfig | Backend,
    limiter: Any,
    records: BookRecords | None,
    worker: str,
    on_event: EventHandler | None = None,
    store: RunStore | None = None,
) -> Version:
    """Generate one unit through the engine and record it; returns its Version.

    The engine saves the version in the store run ``spec.run_id(chapter)`` of ``store``
    (default: ``records.store``) as it finishes. The unit is ``queued`` until the engine
    holds a slot for it (``on_event`` sees that: the local executor marks it ``running``).
    If cancelled, whatever was finished is kept and the unit goes back to ``cancelled``
    with the attempts it made counted. ``records=None`` (a Celery worker) writes no unit
    state: the caller records it elsewhere (Redis).
    """

    def note(state: str, **extra: Any) -> None:
        if records is not None:
            records.set_state(spec.job_id, chapter, version, state, **extra)

    note("queued", worker=worker)
    handle: RunHandle | None = None
    try:
        handle = start_versions(
            spec.prompts[chapter],
            settings=_settings(spec),
            llm=llm,
            project=spec.project,
            chapter=chapter,
            on_event=on_event,
            retry=spec.retry_policy(),
            limiter=limiter,
            indices=[version],
            run_id=spec.run_id(chapter),
            raise_on_all_failed=False,
            store=_store(store, records),
        )
        run = await handle
    except asyncio.CancelledError:
        made = None if handle is None else handle.run.versions[0]
        state = made.status if made is not None and made.ok else "cancelled"
        requests = made.attempt_count if made is not None else 0
        note(state, requests=requests)
        raise
    except Exception:
        note("failed")
        raise
    result = run.versions[0]
    note(result.status, requests=result.attempt_count)
    return result
