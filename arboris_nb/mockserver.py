"""An OpenAI-compatible chat server for tests and benchmarks, with a latency, load and fault model.

It speaks ``POST /v1/chat/completions`` (JSON and SSE streaming), ``GET /v1/models``, and adds
``GET /stats`` / ``POST /stats/reset`` so a test or a notebook can see what the server saw.

What it models (see ``docs/mockserver.md``):

* latency: time to first token, a steady token rate, optional multiplicative jitter;
* load: a generation ``capacity`` with a FIFO queue behind it (like vLLM's ``max_num_seqs``)
  and a ``slowdown`` that stretches latencies as the server fills up;
* limits: ``max_concurrent`` and ``rpm_limit`` answered with 429 and retry headers;
* faults: a random ``error_rate`` (500), a random ``disconnect_rate`` (a stream cut mid-way)
  and scripted ``fail_requests`` by arrival number.

Random draws for request *n* come from ``random.Random(f"{seed}/{n}")``: a per-request
generator rather than one shared stream, so which requests fail does not depend on how
concurrent requests interleave on the event loop, only on the seed and the arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import http
import json
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, NoReturn

from aiohttp import web

from .config import mask_key

__all__ = [
    "MockConfig",
    "MockServer",
    "make_app",
    "serve",
]

# A stream writes at most this often per request; faster token rates are grouped into one
# chunk per write, so 100+ parallel streams do not turn into 100k tiny writes per second.
_MIN_WRITE_INTERVAL_S = 0.02
# Whole-server budget of stream writes per second: with many active streams the per-stream
# write interval grows (tokens are grouped more) so the server stays off the critical path.
_WRITES_PER_S_BUDGET = 5000.0
_RPM_WINDOW_S = 60.0
# Log entries kept for /stats; the oldest go first on a server that runs for days.
_LOG_LIMIT = 100_000
_START_TIMEOUT_S = 30.0
_MAX_BODY_BYTES = 64 * 1024 * 1024

_TOKEN_RE = re.compile(r"\S+\s*")
_WORD_RE = re.compile(r"\S+")

_WORD_TEXT = (
    "the a an of in on at to from with without under over beyond through and but or yet so "
    "old young silent bright dark cold warm distant hidden broken golden grey pale quiet "
    "restless ancient narrow endless small heavy gentle bitter sudden strange familiar "
    "river mountain forest city tower gate road bridge harbor village market garden "
    "window door wall stair lamp candle letter map sword blade coin ring book page ink "
    "storm rain wind snow fog dawn dusk night morning evening moon star sun shadow light "
    "voice silence memory dream promise secret name story road journey path crossing "
    "she he they we it her his their our someone nobody everyone stranger traveler "
    "captain merchant scholar healer guard child mother father sister brother friend "
    "walked ran waited watched listened whispered remembered forgot carried opened "
    "closed followed turned looked smiled frowned answered asked knew felt heard saw "
    "found lost kept broke held left reached wondered began stopped returned "
    "slowly quickly softly again still never always almost perhaps only once"
)
_WORDS = tuple(_WORD_TEXT.split())

ReplyFormat = Literal["text", "json"]


# --------------------------------------------------------------------------- configuration


def _check(ok: bool, name: str, allowed: str, value: object) -> None:
    if not ok:
        raise ValueError(f"MockConfig.{name} must be {allowed}, got {value!r}")


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a capacity is a bug, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class MockConfig:
    """How the mock server behaves. All fields are keyword-only and validated.

    See ``docs/mockserver.md`` for the meaning of every field and the slowdown formula.
    """

    ttft_s: float = 0.2
    tokens_per_s: float = 50.0
    output_tokens: int = 120
    jitter: float = 0.0
    seed: int = 0
    capacity: int | None = None
    slowdown: float = 0.0
    max_concurrent: int | None = None
    rpm_limit: int | None = None
    retry_after_s: float = 1.0
    error_rate: float = 0.0
    disconnect_rate: float = 0.0
    # hash=False: a mapping is not hashable, and the config need not be a dict key.
    fail_requests: Mapping[int, int] = field(default_factory=dict, hash=False)
    reply: str | None = None
    reply_format: ReplyFormat = "text"
    model: str = "mock-model"
    # repr=False: printing the config in a notebook must not show the key.
    require_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._validate_latency()
        self._validate_limits()
        self._validate_faults()
        self._validate_reply()
        # Read-only view, so the frozen config cannot be changed through the mapping either.
        frozen = MappingProxyType({int(k): int(v) for k, v in self.fail_requests.items()})
        object.__setattr__(self, "fail_requests", frozen)

    def _validate_latency(self) -> None:
        _check(_is_num(self.ttft_s) and self.ttft_s >= 0, "ttft_s", "a number >= 0", self.ttft_s)
        tps = self.tokens_per_s
        _check(_is_num(tps) and tps > 0, "tokens_per_s", "a number > 0", tps)
        out = self.output_tokens
        _check(_is_int(out) and out >= 1, "output_tokens", "an int >= 1", out)
        _check(_is_num(self.jitter) and 0 <= self.jitter <= 1, "jitter", "in [0, 1]", self.jitter)
        _check(_is_int(self.seed), "seed", "an int", self.seed)

    def _validate_limits(self) -> None:
        for name in ("capacity", "max_concurrent", "rpm_limit"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= 1), name, "None or >= 1", value)
        sd = self.slowdown
        _check(_is_num(sd) and sd >= 0, "slowdown", "a number >= 0", sd)
        ra = self.retry_after_s
        _check(_is_num(ra) and ra >= 0, "retry_after_s", "a number >= 0", ra)

    def _validate_faults(self) -> None:
        for name in ("error_rate", "disconnect_rate"):
            value = getattr(self, name)
            _check(_is_num(value) and 0 <= value <= 1, name, "in [0, 1]", value)
        fr = self.fail_requests
        _check(isinstance(fr, Mapping), "fail_requests", "a mapping", type(fr).__name__)
        for n, status in self.fail_requests.items():
            _check(_is_int(n) and n >= 1, "fail_requests", "keyed by request number >= 1", n)
            ok = _is_int(status) and 400 <= status <= 599
            _check(ok, "fail_requests", "HTTP statuses in [400, 599]", status)

    def _validate_reply(self) -> None:
        reply = self.reply
        _check(
            reply is None or isinstance(reply, str), "reply", "None or a str", type(reply).__name__
        )
        fmt = self.reply_format
        _check(fmt in ("text", "json"), "reply_format", "'text' or 'json'", fmt)
        model = self.model
        _check(isinstance(model, str) and bool(model), "model", "a non-empty str", model)
        key = self.require_key
        # The key itself is never put in the message, only its type.
        ok = key is None or (isinstance(key, str) and bool(key))
        _check(ok, "require_key", "None or a non-empty str", type(key).__name__)

    def to_kwargs(self) -> dict[str, Any]:
        """The fields as plain picklable values (``MockConfig(**cfg.to_kwargs()) == cfg``)."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs["fail_requests"] = dict(self.fail_requests)
        return kwargs

    def __reduce__(self) -> tuple[Callable[..., MockConfig], tuple[dict[str, Any]]]:
        # A mappingproxy does not pickle; rebuild from plain values instead.
        return _config_from_kwargs, (self.to_kwargs(),)


def _config_from_kwargs(kwargs: dict[str, Any]) -> MockConfig:
    return MockConfig(**kwargs)


# --------------------------------------------------------------------------- reply text


def _tokens(text: str) -> list[str]:
    """Split ``text`` into tokens: a word plus its trailing whitespace (they join back exactly)."""
    tokens = _TOKEN_RE.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    if tokens and lead:
        tokens[0] = lead + tokens[0]
    return tokens


def _word_plan(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` (word, separator) pairs shaped into sentences of 6-14 words, paragraphs of 3-5."""
    plan: list[tuple[str, str]] = []
    sentence_left, sentences_left = 0, rng.randint(3, 5)
    for _ in range(n):
        word = rng.choice(_WORDS)
        if sentence_left == 0:
            sentence_left = rng.randint(6, 14)
            word = word.capitalize()
        sentence_left -= 1
        sep = " "
        if sentence_left == 0:
            word += "."
            sentences_left -= 1
            if sentences_left == 0:
                sep, sentences_left = "\n\n", rng.randint(3, 5)
        elif sentence_left > 2 and rng.random() < 0.08:
            word += ","
        plan.append((word, sep))
    return plan


def _render(plan: list[tuple[str, str]], m: int) -> str:
    """The first ``m`` words of ``plan`` as text ending with a full stop."""
    words = plan[: max(m, 1)]
    text = "".join(w + sep for w, sep in words[:-1])
    return text + words[-1][0].rstrip(".,") + "."


def _pseudo_text(rng: random.Random, n_tokens: int) -> str:
    return _render(_word_plan(rng, n_tokens), n_tokens)


def _pseudo_json(rng: random.Random, n_tokens: int) -> str:
    """Arboris-Novel's chapter JSON, sized so the whole reply is about ``n_tokens`` tokens."""
    title = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5))).title()
    summary = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
    content_plan = _word_plan(rng, n_tokens)

    def dump(m: int) -> str:
        data = {"title": title, "summary": summary, "full_content": _render(content_plan, m)}
        return json.dumps(data, ensure_ascii=False)

    # Paragraph breaks are escaped inside the JSON string and merge two words into one
    # token, so converge on the size instead of computing it.
    m = n_tokens
    for _ in range(4):
        text = dump(m)
        diff = n_tokens - len(_tokens(text))
        if diff == 0 or (m == 1 and diff < 0):
            break
        m = max(1, min(len(content_plan), m + diff))
    return dump(m)


def _message_text(messages: list[Any]) -> str:
    parts: list[str] = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _prompt_digest(messages: list[Any]) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- server state


class _FifoGate:
    """A counting gate whose waiters are served strictly in arrival order.

    ``release`` hands the slot straight to the oldest waiter, so a newcomer can never
    overtake the queue (asyncio.Semaphore only became fair in later 3.11 patch releases).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for fut in self.waiters if not fut.done())

    def enter(self) -> asyncio.Future[None] | None:
        """Take a slot now (``None``) or queue: the future resolves when a slot is handed over."""
        if self.active < self.capacity and not self.queued:
            self.active += 1
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return fut

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # slot passes to the waiter; `active` is unchanged
                return
        self.active -= 1


@dataclass
class _Plan:
    """What one admitted request will produce, decided up front from its own RNG."""

    tokens: list[str]
    finish_reason: str
    cut_after: int | None
    rng: random.Random


class _State:
    """Counters, log, limits and the capacity gate of one running app."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.gate = _FifoGate(config.capacity) if config.capacity else None
        self.in_flight = 0
        self.active = 0  # sequences generating (past the capacity gate)
        self.reset()

    def reset(self) -> None:
        """Clear counters and log; gauges of requests still running are kept."""
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.max_in_flight = self.in_flight
        self.max_queued = self.queued
        self.disconnects = 0
        self.completion_tokens = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_LIMIT)
        self.rpm_window: deque[float] = deque()

    @property
    def queued(self) -> int:
        return self.gate.queued if self.gate else 0

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def arrive(self, request: web.Request) -> dict[str, Any]:
        self.requests += 1
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
        entry: dict[str, Any] = {
            "n": self.requests,
            "arrival_s": self.now(),
            "end_s": None,
            "first_token_s": None,
            "status": None,
            "outcome": None,
            "stream": None,
            "tokens": 0,
            "version": request.headers.get("X-Arboris-Version"),
            "attempt": request.headers.get("X-Arboris-Attempt"),
            "run": request.headers.get("X-Arboris-Run"),
            "key_id": mask_key(key) if key else None,
            "prompt_sha": None,
        }
        self.log.append(entry)
        return entry

    def finish(self, entry: dict[str, Any], status: int, outcome: str) -> None:
        entry.update(status=status, outcome=outcome, end_s=self.now())
        self.by_status[str(status)] += 1
        self.completion_tokens += entry["tokens"]
        if outcome == "disconnect":
            self.disconnects += 1

    def latency_factor(self) -> float:
        """Latency multiplier for the current load (see ``docs/mockserver.md``)."""
        cfg = self.config
        if cfg.capacity:
            return 1.0 + cfg.slowdown * (self.active / cfg.capacity)
        return 1.0 + cfg.slowdown * max(0, self.active - 1)

    def write_interval(self) -> float:
        return max(_MIN_WRITE_INTERVAL_S, self.active / _WRITES_PER_S_BUDGET)

    def rpm_full(self) -> bool:
        limit = self.config.rpm_limit
        if limit is None:
            return False
        horizon = time.monotonic() - _RPM_WINDOW_S
        while self.rpm_window and self.rpm_window[0] <= horizon:
            self.rpm_window.popleft()
        return len(self.rpm_window) >= limit

    def snapshot(self, with_log: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "active": self.active,
            "queued": self.queued,
            "max_queued": self.max_queued,
            "disconnects": self.disconnects,
            "completion_tokens": self.completion_tokens,
            "uptime_s": self.now(),
        }
        if with_log:
            data["log"] = [dict(e) for e in self.log]
        return data


_STATE = web.AppKey("arboris_mock_state", _State)


# --------------------------------------------------------------------------- responses


class _Reject(Exception):
    """Raised to answer a request at once with an OpenAI-style error."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class _ClientGone(Exception):
    """The client closed its connection before the reply was complete."""


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _error_response(config: MockConfig, rej: _Reject) -> web.Response:
    err = {"message": rej.message, "type": _error_type(rej.status), "param": None, "code": rej.code}
    err.update(rej.extra)
    headers: dict[str, str] = {}
    if rej.status == 429:
        headers["Retry-After"] = str(math.ceil(config.retry_after_s))
        headers["retry-after-ms"] = str(round(config.retry_after_s * 1000))
    return web.json_response({"error": err}, status=rej.status, headers=headers)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _send(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Write ``resp`` now, so the request's end time and in-flight count include the write."""
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except ConnectionError as exc:
        raise _ClientGone from exc
    return resp


class _Chunks:
    """Pre-rendered pieces of ``chat.completion.chunk`` events (cheap per token)."""

    def __init__(self, cid: str, created: int, model: str) -> None:
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        self.head = json.dumps(head)[:-1]  # drop "}" to append fields

    def event(self, body: str) -> bytes:
        return f"data: {self.head}, {body}}}\n\n".encode()

    def delta(self, delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.event(f'"choices": [{json.dumps(choice, ensure_ascii=False)}]')

    def usage(self, usage: dict[str, int]) -> bytes:
        return self.event(f'"choices": [], "usage": {json.dumps(usage)}')


# --------------------------------------------------------------------------- request handling


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Reject(400, f"Invalid JSON body: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise _Reject(400, "The request body must be a JSON object.", "invalid_json")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        msg = "Missing required parameter: 'messages' (a non-empty list)."
        raise _Reject(400, msg, "missing_required_parameter", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise _Reject(400, "Each message needs a 'role'.", "invalid_value", param="messages")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not (_is_int(value) and value >= 1):
            raise _Reject(400, f"'{name}' must be an integer >= 1.", "invalid_value", param=name)
    if not isinstance(body.get("stream", False), bool):
        raise _Reject(400, "'stream' must be a boolean.", "invalid_value", param="stream")
    return body


def _check_auth(config: MockConfig, request: web.Request) -> None:
    if config.require_key is None:
        return
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), config.require_key.encode()):
        raise _Reject(401, "Incorrect API key provided.", "invalid_api_key")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _admit(state: _State, n: int, rng: random.Random) -> None:
    """Apply scripted failures, limits and random errors; raise ``_Reject`` to refuse."""
    cfg = state.config
    scripted = cfg.fail_requests.get(n)
    if scripted is not None:
        msg = f"Scripted failure of request {n}: {_phrase(scripted)}."
        raise _Reject(scripted, msg, "mock_scripted")
    if cfg.max_concurrent is not None and state.in_flight >= cfg.max_concurrent:
        limit = cfg.max_concurrent
        msg = f"Rate limit reached: {state.in_flight} requests in flight (limit {limit})."
        raise _Reject(429, msg, "rate_limit_exceeded")
    if state.rpm_full():
        msg = f"Rate limit reached for requests per min (RPM): limit {cfg.rpm_limit}."
        raise _Reject(429, msg, "rate_limit_exceeded")
    if rng.random() < cfg.error_rate:
        raise _Reject(500, "The server had an error while processing your request.", None)


def _plan(
    state: _State, body: dict[str, Any], digest: str, version: str | None, rng: random.Random
) -> _Plan:
    cfg = state.config
    disconnect = rng.random() < cfg.disconnect_rate and bool(body.get("stream"))
    # Text depends on prompt, seed and version only, so retries of a version get the same
    # text while parallel versions of one prompt differ, as sampled LLM replies do.
    text_rng = random.Random(f"{cfg.seed}/{digest}/{version}")
    if cfg.reply is not None:
        full = _tokens(cfg.reply)
    elif cfg.reply_format == "json":
        full = _tokens(_pseudo_json(text_rng, cfg.output_tokens))
    else:
        full = _tokens(_pseudo_text(text_rng, cfg.output_tokens))
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    tokens = full[:cap] if cap else full
    finish = "length" if len(tokens) < len(full) else "stop"
    cut_after = rng.randint(1, max(1, len(tokens) - 1)) if disconnect and tokens else None
    return _Plan(tokens, finish, cut_after, rng)


async def _paced(
    state: _State, request: web.Request, plan: _Plan, entry: dict[str, Any]
) -> AsyncIterator[list[str]]:
    """Yield the plan's tokens in batches, each when it is due.

    Deadlines are absolute (not sleep-after-write) so event-loop lag under load does not
    add up; the load factor is re-read at every step, as a batch's size changes over time.
    """
    cfg, loop = state.config, asyncio.get_running_loop()

    def jitter() -> float:
        return 1.0 + plan.rng.uniform(-cfg.jitter, cfg.jitter) if cfg.jitter else 1.0

    due = loop.time() + cfg.ttft_s * state.latency_factor() * jitter()
    sent, step, total = 0, 1, len(plan.tokens)
    while True:
        # sleep(0) when late still lets other streams run between catch-up writes
        await asyncio.sleep(max(0.0, due - loop.time()))
        if _client_gone(request):
            raise _ClientGone
        batch = plan.tokens[sent : sent + step]
        if entry["first_token_s"] is None:
            entry["first_token_s"] = state.now()
        sent += len(batch)
        yield batch
        if sent >= total:
            return
        # floor: jitter=1 can draw a factor of exactly 0
        itl = max(1e-9, state.latency_factor() * jitter() / cfg.tokens_per_s)
        step = min(total - sent, max(1, math.ceil(state.write_interval() / itl)))
        due += step * itl


def _usage(body: dict[str, Any], completion: int) -> dict[str, int]:
    prompt = max(1, len(_WORD_RE.findall(_message_text(body["messages"]))))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _complete(
    state: _State, request: web.Request, body: dict[str, Any], plan: _Plan, entry: dict[str, Any]
) -> web.StreamResponse:
    async for batch in _paced(state, request, plan, entry):
        entry["tokens"] += len(batch)
    content = "".join(plan.tokens)
    payload = {
        "id": f"chatcmpl-mock-{entry['n']}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or state.config.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": plan.finish_reason,
            }
        ],
        "usage": _usage(body, len(plan.tokens)),
    }
    resp = web.json_response(payload, dumps=lambda o: json.dumps(o, ensure_ascii=False))
    return await _send(request, resp)


async def _stream(
    state: _State, request: web.Request, body: dict[str, Any], plan: _Plan, entry: dict[str, Any]
) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    resp = web.StreamResponse(status=200, headers=headers)
    chunks = _Chunks(
        f"chatcmpl-mock-{entry['n']}", int(time.time()), body.get("model") or state.config.model
    )
    try:
        # Headers go out at once, as real servers do; the time to first token is in the body.
        await resp.prepare(request)
        role = chunks.delta({"role": "assistant", "content": ""})
        async for batch in _paced(state, request, plan, entry):
            if plan.cut_after is not None:
                batch = batch[: plan.cut_after - entry["tokens"]]
            out, role = role, b""  # the role chunk goes out with the first token
            entry["tokens"] += len(batch)
            await resp.write(out + chunks.delta({"content": "".join(batch)}))
            if entry["tokens"] == plan.cut_after:
                _cut(request, resp)
        tail = chunks.delta({}, plan.finish_reason)
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += chunks.usage(_usage(body, entry["tokens"]))
        await resp.write(tail + b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError as exc:
        raise _ClientGone from exc
    return resp


class _Disconnected(Exception):
    """A stream was cut on purpose (``disconnect_rate``); carries the prepared response."""

    def __init__(self, resp: web.StreamResponse) -> None:
        super().__init__("mock disconnect")
        self.resp = resp


def _cut(request: web.Request, resp: web.StreamResponse) -> NoReturn:
    """Close the socket mid-stream: no final chunk, no [DONE], so clients see an error.

    ``close`` (not ``abort``) flushes what was written; aiohttp's own ``write_eof`` then
    finds a closing transport and treats the request as a premature disconnection.
    """
    if request.transport is not None:
        request.transport.close()
    raise _Disconnected(resp)


async def _acquire(state: _State) -> None:
    """Wait for a generation slot in FIFO order (no-op without ``capacity``)."""
    if state.gate is None:
        return
    waiter = state.gate.enter()
    if waiter is None:
        return
    state.max_queued = max(state.max_queued, state.queued)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled():
            state.gate.release()  # the slot was handed over just as we were cancelled
        raise


async def _serve_admitted(
    state: _State, request: web.Request, body: dict[str, Any], plan: _Plan, entry: dict[str, Any]
) -> web.StreamResponse:
    """Queue for capacity, generate, and keep the load gauges right even on cancellation."""
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        await _acquire(state)
        state.active += 1
        try:
            if body.get("stream"):
                return await _stream(state, request, body, plan, entry)
            return await _complete(state, request, body, plan, entry)
        finally:
            state.active -= 1
            if state.gate is not None:
                state.gate.release()
    finally:
        state.in_flight -= 1


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    entry = state.arrive(request)
    try:
        resp = await _chat_inner(state, request, entry)
    except _Reject as rej:
        state.finish(entry, rej.status, "rejected")
        error = _error_response(state.config, rej)
        with contextlib.suppress(_ClientGone):  # nobody left to tell
            await _send(request, error)
        return error
    except _Disconnected as cut:
        state.finish(entry, 200, "disconnect")
        return cut.resp
    except _ClientGone:
        # 499 = "client closed request" (nginx's convention). aiohttp finds the socket
        # closed when it tries to send this and drops the connection quietly.
        state.finish(entry, 499, "client_closed")
        return web.Response(status=499)
    except asyncio.CancelledError:
        state.finish(entry, 499, "client_closed")
        raise
    state.finish(entry, resp.status, "ok")
    return resp


async def _chat_inner(
    state: _State, request: web.Request, entry: dict[str, Any]
) -> web.StreamResponse:
    cfg = state.config
    _check_auth(cfg, request)
    body = _parse_body(await request.read())
    digest = _prompt_digest(body["messages"])
    entry.update(stream=bool(body.get("stream")), prompt_sha=digest[:12])
    n = entry["n"]
    # One generator per request, drawn in a fixed order: error, disconnect, cut, jitter.
    rng = random.Random(f"{cfg.seed}/{n}")
    _admit(state, n, rng)
    if cfg.rpm_limit is not None:
        state.rpm_window.append(time.monotonic())
    plan = _plan(state, body, digest, entry["version"], rng)
    return await _serve_admitted(state, request, body, plan, entry)


async def _models(request: web.Request) -> web.Response:
    cfg = request.app[_STATE].config
    model = {"id": cfg.model, "object": "model", "created": 0, "owned_by": "arboris-mock"}
    return web.json_response({"object": "list", "data": [model]})


async def _stats(request: web.Request) -> web.Response:
    with_log = request.query.get("log", "1").lower() not in ("0", "false", "no")
    return web.json_response(request.app[_STATE].snapshot(with_log))


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[_STATE].reset()
    return web.json_response({"ok": True})


# --------------------------------------------------------------------------- app and serving


def make_app(config: MockConfig | None = None) -> web.Application:
    """The aiohttp application of the mock server (run it with any aiohttp runner)."""
    # Room for long novel prompts (aiohttp's default cap is 1 MiB).
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[_STATE] = _State(config or MockConfig())
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/stats/reset", _stats_reset)
    return app


def _root_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _start(config: MockConfig, host: str, port: int) -> tuple[web.AppRunner, int]:
    # A short shutdown timeout: on stop, streams still running are cut rather than awaited.
    # handler_cancellation: a handler whose client left is cancelled, not left pending.
    runner = web.AppRunner(
        make_app(config), access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    # A deep backlog, so a burst of hundreds of connections is queued, not refused.
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


async def serve(
    config: MockConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve on the running loop until cancelled; ``on_ready`` gets the base URL (``…/v1``)."""
    runner, real_port = await _start(config or MockConfig(), host, port)
    try:
        if on_ready is not None:
            on_ready(_root_url(host, real_port) + "/v1")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _child_main() -> int:
    """Entry point of ``python -m arboris_nb.mockserver``, run by ``MockServer(process=True)``.

    Reads one JSON line ``{"config": {...}, "host": ..., "port": ...}`` from stdin, prints
    ``READY <port>`` (or ``ERROR <message>``) on stdout, and serves until stdin reaches EOF:
    the parent closes it to stop us, and if the parent dies the pipe closes by itself, so
    no orphaned server outlives the notebook or test that started it.
    """
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = json.loads(sys.stdin.readline())
        kwargs = dict(spec["config"])
        kwargs["fail_requests"] = {int(k): v for k, v in kwargs["fail_requests"].items()}
        asyncio.run(_child_serve(MockConfig(**kwargs), spec["host"], int(spec["port"])))
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


async def _child_serve(config: MockConfig, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(eof.set)

    runner, real_port = await _start(config, host, port)
    try:
        threading.Thread(target=wait_for_eof, daemon=True).start()
        print(f"READY {real_port}", flush=True)
        await eof.wait()
    finally:
        await runner.cleanup()


class MockServer:
    """Run the mock server in a background thread (or process) of this program.

    ``with MockServer(ttft_s=0.05, capacity=4) as base_url:`` yields
    ``"http://127.0.0.1:<port>/v1"``. Keyword fields override those of ``config``.
    ``process=True`` runs it in a separate process, so a heavy benchmark client does not
    share the GIL with the server.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        process: bool = False,
        **config_fields: Any,
    ) -> None:
        base = config or MockConfig()
        self.config = dataclasses.replace(base, **config_fields) if config_fields else base
        self.host = host
        self.port = port
        self.process = process
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:54321`` (the real port once started)."""
        return _root_url(self.host, self.port)

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        """Whether the server was started and not stopped."""
        return self._runner is not None or self._proc is not None

    def start(self) -> str:
        """Start serving and return the base URL."""
        if self.running:
            raise RuntimeError("MockServer is already running")
        if self.process:
            self._start_process()
        else:
            self._start_thread()
        return self.base_url

    def _start_thread(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="arboris-mockserver", daemon=True)
        thread.start()
        fut = asyncio.run_coroutine_threadsafe(_start(self.config, self.host, self.port), loop)
        try:
            self._runner, self.port = fut.result(_START_TIMEOUT_S)
        except BaseException:
            _stop_loop(loop, thread)
            raise
        self._loop, self._thread = loop, thread

    def _start_process(self) -> None:
        # A fresh interpreter rather than multiprocessing: spawn re-runs an unguarded
        # __main__ script, and fork is unsafe in a process with threads (a Jupyter kernel).
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "arboris_nb.mockserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            self.port = _child_handshake(proc, self.config, self.host, self.port)
        except BaseException:
            _end_process(proc)
            raise
        self._proc = proc
        # Stop the child if this object is dropped or the interpreter exits without stop().
        self._finalizer = weakref.finalize(self, _end_process, proc)

    def stop(self) -> None:
        """Stop serving (streams still running are cut). Safe to call twice."""
        if self._proc is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            _end_process(self._proc)
            self._proc = None
        if self._runner is not None and self._loop is not None and self._thread is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            _stop_loop(self._loop, self._thread)
        self._runner = self._loop = self._thread = None

    def _fetch(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def stats(self, *, log: bool = True) -> dict[str, Any]:
        """The server's ``/stats`` (fetched over HTTP, so it works in process mode too)."""
        return self._fetch("/stats" if log else "/stats?log=0")

    def reset(self) -> None:
        """Clear the server's counters and log (``POST /stats/reset``)."""
        self._fetch("/stats/reset", method="POST")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        mode = "process" if self.process else "thread"
        return f"<MockServer {self.base_url} {mode} {state}>"


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    if not thread.is_alive():
        loop.close()


def _child_handshake(proc: subprocess.Popen[str], config: MockConfig, host: str, port: int) -> int:
    """Send the child its configuration and wait for ``READY <port>``."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    spec = {"config": config.to_kwargs(), "host": host, "port": port}
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=_START_TIMEOUT_S).strip()
    except queue.Empty:
        raise RuntimeError("mock server process did not start in time") from None
    if not line.startswith("READY "):
        raise RuntimeError(f"mock server process failed: {line or 'exited'}")
    return int(line.split()[1])


def _end_process(proc: subprocess.Popen[str]) -> None:
    """Close the child's stdin (its stop signal), then escalate if it lingers."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


if __name__ == "__main__":
    sys.exit(_child_main())
