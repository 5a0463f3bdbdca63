"""Header-aware pacing: a budget per API key read from ``x-ratelimit-*``, and the Retry-After gate.

OpenAI-style APIs answer every request with ``x-ratelimit-limit|remaining|reset-requests``
and the same three for ``-tokens``; ``reset`` is the time until the bucket is full again
(``"1s"``, ``"6m0s"``, ``"120ms"``). A :class:`RateBudget` keeps them and, before a request
starts, checks that its cost — one request, and its prompt tokens plus the output it may
produce — fits what is left, less every request sent and not yet answered. If not, the
request waits for the refill instead of earning a 429.

The refill is assumed continuous (OpenAI's buckets) but estimated from below: the
remaining count is rounded down by the server, so the estimate never runs ahead of it.
Answers arrive out of order (each request has its own connection), so an answer replaces
the estimate only when it shows *less* left than the estimate does: a higher figure may be
an older one. Counting the unanswered requests again may count some twice — cautious, and
only until their own answers come, a round trip later.

A 429 that carries ``Retry-After`` closes the budget's **gate**: no request on that key
starts before it ends — not only the one that got the 429. When it ends, one request goes
first (the *pilot*) and the others wait for its answer's status line (milliseconds: a 429
comes at once, a stream's headers before its first token): a window that is still open,
or a budget that refilled for one request, then costs one more 429 instead of a 429 for
every request that waited.

Behind a LiteLLM proxy the provider's headers arrive prefixed ``llm_provider-``; both forms
are read. A proxy's own limits and the provider's are separate buckets, and a request must
fit both.

Budgets are per key (and endpoint) and shared by every run in the process that uses that
key. Keys of one account share the account's limits: give them one budget
(``KeyPool(..., shared_budget=True)``), or each key's budget spends the same headroom.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # typing only: backends import this module
    from .backends.base import ChatRequest, Connection, Message, Usage

__all__ = [
    "PROVIDER_PREFIX",
    "RateBudget",
    "estimate_tokens",
    "parse_duration",
    "provider_headers",
    "ready",
    "request_key",
]

log = logging.getLogger("arboris_nb")

#: The prefix a LiteLLM proxy puts on the upstream provider's headers.
PROVIDER_PREFIX = "llm_provider-"
_PREFIXES = ("", PROVIDER_PREFIX)
_RESOURCES = ("requests", "tokens")
# Output tokens assumed for a request without max_tokens before any reply showed its size.
_DEFAULT_OUTPUT_TOKENS = 1024
# Without a reset header, assume a per-minute limit (the common case) refills in a minute.
_DEFAULT_RESET_S = 60.0
# A waiting request re-reads the budget at least this often: new answers may move it.
_MAX_SLEEP_S = 0.5
# How often a request behind the gate's pilot looks again, where it cannot await it.
_PILOT_POLL_S = 0.01
# A pilot that sent no status line for this long (or was never sent) no longer holds the rest.
_PILOT_TIMEOUT_S = 1.0
_REGISTRY_SIZE = 64
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")

Clock = Callable[[], float]


def _loop_clock() -> float:
    """The running loop's clock (fake under looptime), else the monotonic clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def parse_duration(text: str | None) -> float | None:
    """Seconds from a reset value: ``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1h2m3.5s"``, ``"2.5"``."""
    if text is None:
        return None
    text = text.strip().lower()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def provider_headers(headers: Mapping[str, str], name: str) -> list[str]:
    """The values of ``name`` and of its ``llm_provider-`` form that are present."""
    lowered = {k.lower(): v for k, v in headers.items()}
    found = (lowered.get(prefix + name.lower()) for prefix in _PREFIXES)
    return [value for value in found if value]


def estimate_tokens(messages: list[Message]) -> int:
    """A prompt's token count from above: ~4 characters a token in ASCII, about one per CJK
    character, plus a few per message. Counted from the UTF-8 length (C speed: a novel's
    prompt is long, and this runs before every request): a CJK character takes 3 bytes."""
    count = 0
    for message in messages:
        text = str(message.get("content", ""))
        wide = math.ceil((len(text.encode("utf-8", "surrogatepass")) - len(text)) / 2)
        count += math.ceil(max(0, len(text) - wide) / 4) + wide + 4
    return max(1, count)


@dataclass
class _Seen:
    """One bucket as an answer described it."""

    limit: float
    remaining: float
    reset_s: float
    at: float  # when that answer arrived

    def level(self, now: float) -> float:
        """What is left now, from below: the remaining count is rounded down, so the
        refill rate is taken as if one more unit were missing."""
        if self.reset_s <= 0 or now >= self.at + self.reset_s:
            return self.limit
        return self.remaining + self._rate() * max(0.0, now - self.at)

    def wait_s(self, need: float, now: float) -> float:
        if need <= self.level(now) or need > self.limit:
            return 0.0  # fits, or never will: then the server's answer says so
        rate = self._rate()
        full = self.at + self.reset_s
        due = min(full, self.at + (need - self.remaining) / rate) if rate > 0 else full
        return max(0.0, due - now)

    def _rate(self) -> float:
        return max(0.0, self.limit - self.remaining - 1) / self.reset_s


class RateBudget:
    """What one key may still send, from the answers' rate-limit headers; see the module doc.

    ``clock`` is injectable for tests. :meth:`for_key` returns the process-wide budget of a
    key, so concurrent and consecutive runs on one key pace together.
    """

    _registry: ClassVar[OrderedDict[str, RateBudget]] = OrderedDict()

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or _loop_clock
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._pending: dict[Hashable, int] = {}  # requests sent, not answered: key → tokens
        self._gate_until = -math.inf
        self._pilot_due = False  # the gate closed: the first request after it goes alone
        self._pilot: Hashable | None = None  # that request, until its answer
        self._pilot_at = -math.inf
        self._pilot_answered = asyncio.Event()
        self._outputs: deque[int] = deque(maxlen=20)
        self._prompt_ratio = 1.0
        self.waits = 0  # requests that had to wait

    @classmethod
    def for_key(cls, base_url: str | None, api_key: str | None) -> RateBudget:
        """The shared budget of a key on an endpoint (the key itself is only hashed)."""
        ident = hashlib.sha256(f"{base_url}\x1f{api_key}".encode()).hexdigest()
        budget = cls._registry.get(ident)
        if budget is None:
            budget = cls._registry[ident] = cls()
            while len(cls._registry) > _REGISTRY_SIZE:
                cls._registry.popitem(last=False)
        cls._registry.move_to_end(ident)
        return budget

    def __repr__(self) -> str:
        known = ", ".join(f"{p}{r}={s.remaining:g}/{s.limit:g}" for (p, r), s in self._seen.items())
        return f"RateBudget({known or 'no headers yet'})"

    def now(self) -> float:
        return self._clock()

    def clear(self) -> None:
        """Forget every answer, reservation and gate — for a server whose limits were reset
        (``bench --mock`` resets its mock before each run)."""
        self._seen.clear()
        self._pending.clear()
        self._gate_until = -math.inf
        self._pilot_due, self._pilot = False, None
        self._pilot_answered.set()

    # -- before a request --------------------------------------------------------------
    def cost(self, request: ChatRequest) -> int:
        """Tokens ``request`` may be charged: its prompt (once) and the output each of its
        ``n`` choices may produce."""
        prompt = math.ceil(estimate_tokens(request.messages) * self._prompt_ratio)
        if request.max_tokens is not None:
            return prompt + request.n * request.max_tokens
        each = max(self._outputs) if self._outputs else _DEFAULT_OUTPUT_TOKENS
        return prompt + request.n * each

    def wait_s(self, tokens: int) -> float:
        """Seconds before a request of ``tokens`` may start (0 = now)."""
        now = self._clock()
        wait = max(0.0, self._gate_until - now)
        if wait == 0 and self._pilot_out(now):
            wait = _PILOT_POLL_S  # the pilot's answer tells whether the gate should stay shut
        for (_, resource), seen in self._seen.items():
            if resource == "requests":
                need = 1 + len(self._pending)
            else:
                need = tokens + sum(self._pending.values())
            wait = max(wait, seen.wait_s(need, now))
        return wait

    def _pilot_out(self, now: float) -> bool:
        # Lost (cancelled before it was sent), very slow to answer, or reserved on another
        # event loop's clock (a budget outlives the loop): it holds nobody any longer.
        if self._pilot is not None and not 0 <= now - self._pilot_at <= _PILOT_TIMEOUT_S:
            self._pilot = None
            self._pilot_answered.set()
        return self._pilot is not None

    def reserve(self, key: Hashable, tokens: int) -> None:
        """Count a request about to be sent until its answer (or failure) comes; the first
        after a gate is its pilot."""
        self._pending[key] = tokens
        if self._pilot_due and self._clock() >= self._gate_until:
            self._pilot_due, self._pilot, self._pilot_at = False, key, self._clock()
            self._pilot_answered = asyncio.Event()

    def release(self, key: Hashable) -> None:
        """The request ``key`` was answered or failed: stop counting it as pending."""
        self._pending.pop(key, None)
        if key == self._pilot and key is not None:
            self._pilot = None  # a 429 closes the gate again (block) before anyone runs
            self._pilot_answered.set()

    async def acquire(self, request: ChatRequest) -> float:
        """Wait until ``request`` fits, reserve it, and return the seconds waited."""
        tokens = self.cost(request)
        start = self._clock()
        wait = self.wait_s(tokens)
        if wait > 0:
            self.waits += 1
            log.debug("pacing: waiting %.2f s for the rate-limit budget", wait)
        while wait > 0:
            if self._pilot is not None and self._clock() >= self._gate_until:
                await self._await_pilot()
            else:
                await asyncio.sleep(min(wait, _MAX_SLEEP_S))
            wait = self.wait_s(tokens)
        self.reserve(request_key(request), tokens)
        return self._clock() - start

    async def _await_pilot(self) -> None:
        try:
            await asyncio.wait_for(self._pilot_answered.wait(), _PILOT_TIMEOUT_S)
        except TimeoutError:
            pass
        except RuntimeError:  # the event belongs to another (finished) event loop
            await asyncio.sleep(_PILOT_POLL_S)

    # -- after an answer ---------------------------------------------------------------
    def update(self, headers: Mapping[str, str], key: Hashable = None) -> None:
        """Read an answer's headers; ``key``: its request, answered now (no longer pending)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        now = self._clock()
        for prefix in _PREFIXES:
            for resource in _RESOURCES:
                seen = _read(lowered, prefix, resource, now)
                old = self._seen.get((prefix, resource))
                if seen is not None and (old is None or _newer_or_lower(seen, old, now)):
                    self._seen[(prefix, resource)] = seen
        self.release(key)

    def block(self, seconds: float) -> None:
        """Close the gate for ``seconds`` (a 429's Retry-After): nobody on this key sends,
        and when it opens, one request goes first."""
        self._gate_until = max(self._gate_until, self._clock() + seconds)
        self._pilot_due = True

    def note_usage(self, request: ChatRequest, usage: Usage) -> None:
        """Learn the output size to expect and how far off the prompt estimate is."""
        if usage.output_tokens > 0:  # an n > 1 request reports all its choices together
            self._outputs.append(math.ceil(usage.output_tokens / request.n))
        if usage.input_tokens:
            ratio = usage.input_tokens / estimate_tokens(request.messages)
            self._prompt_ratio = min(4.0, max(0.25, ratio))


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number >= 0 else None


def _newer_or_lower(new: _Seen, old: _Seen, now: float) -> bool:
    """Whether ``new`` replaces ``old``: a changed limit, or less left now."""
    return new.limit != old.limit or new.level(now) <= old.level(now)


def request_key(request: ChatRequest) -> Hashable:
    """Which request a reservation belongs to: run, version, attempt, and whether it is
    that attempt's hedge (both are in flight at once)."""
    return (request.run_id, request.version_index, request.attempt, request.hedge)


def _read(headers: Mapping[str, str], prefix: str, resource: str, now: float) -> _Seen | None:
    limit = _number(headers.get(f"{prefix}x-ratelimit-limit-{resource}"))
    remaining = _number(headers.get(f"{prefix}x-ratelimit-remaining-{resource}"))
    if limit is None or remaining is None or limit <= 0:
        return None
    reset = parse_duration(headers.get(f"{prefix}x-ratelimit-reset-{resource}"))
    reset = _DEFAULT_RESET_S if reset is None else reset
    return _Seen(limit, min(remaining, limit), reset, now)


async def ready(conn: Connection, request: ChatRequest) -> None:
    """Wait until ``conn`` may send ``request``: its budget fits and no Retry-After gate is
    closed. A no-op for connections without pacing (``SimulatedLLM``, custom backends)."""
    hook = getattr(conn, "ready", None)
    if hook is not None:
        await hook(request)
