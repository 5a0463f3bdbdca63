"""The mock's HTTP side: chat completions (JSON and SSE), models, stats; app and serving."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from aiohttp import web

from ._config import MockConfig, is_int
from ._state import STATE, Plan, State
from ._text import prompt_digest, prompt_tokens, pseudo_json, pseudo_text, tokens

__all__ = ["make_app", "root_url", "serve", "start"]

_MAX_BODY_BYTES = 64 * 1024 * 1024
_MAX_N = 128  # OpenAI's own upper bound for n


# --------------------------------------------------------------------------- responses


class _Reject(Exception):
    """Raised to answer a request at once with an OpenAI-style error.

    A 429 says when to come back (``retry_after_s``) and may carry rate-limit ``headers``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra
        self.retry_after_s = retry_after_s
        self.headers = headers or {}


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
    headers = dict(rej.headers)
    if rej.status == 429:
        wait = config.retry_after_s if rej.retry_after_s is None else rej.retry_after_s
        # Whole seconds rounded up (so never early), and the exact figure in milliseconds.
        headers["Retry-After"] = str(math.ceil(wait - 1e-9))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000 - 1e-6))
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

    def delta(self, delta: dict[str, str], finish: str | None = None, index: int = 0) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.event(f'"choices": [{json.dumps(choice, ensure_ascii=False)}]')

    def usage(self, usage: dict[str, Any]) -> bytes:
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
        if value is not None and not (is_int(value) and value >= 1):
            raise _Reject(400, f"'{name}' must be an integer >= 1.", "invalid_value", param=name)
    if not isinstance(body.get("stream", False), bool):
        raise _Reject(400, "'stream' must be a boolean.", "invalid_value", param="stream")
    n = body.get("n", 1)
    if n is not None and not (is_int(n) and 1 <= n <= _MAX_N):
        raise _Reject(
            400, f"'n' must be an integer from 1 to {_MAX_N}.", "invalid_value", param="n"
        )
    return body


def _choices(body: dict[str, Any]) -> int:
    return int(body.get("n") or 1)


def _check_n(config: MockConfig, body: dict[str, Any]) -> None:
    if config.reject_n and _choices(body) > 1:
        msg = "This model does not support n > 1; ask for one choice per request."
        raise _Reject(400, msg, "invalid_value", param="n")


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


def _cost(cfg: MockConfig, body: dict[str, Any]) -> int:
    """Tokens a request is charged when admitted: prompt + n × max_tokens (else
    ``output_tokens``)."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or cfg.output_tokens
    return prompt_tokens(body["messages"]) + _choices(body) * int(cap)


def _admit(state: State, n: int, rng: random.Random, body: dict[str, Any]) -> dict[str, str]:
    """Apply scripted failures, rate limits and random errors; raise ``_Reject`` to refuse.

    Returns the rate-limit headers the answer carries (the budgets after this request).
    """
    cfg = state.config
    scripted = cfg.fail_requests.get(n)
    if scripted is not None:
        msg = f"Scripted failure of request {n}: {_phrase(scripted)}."
        raise _Reject(scripted, msg, "mock_scripted")
    verdict = state.limits.admit(in_flight=state.in_flight, tokens=_cost(cfg, body))
    if verdict.refused is not None:
        raise _Reject(
            429,
            verdict.refused,
            "rate_limit_exceeded",
            retry_after_s=verdict.retry_after_s,
            headers=verdict.headers,
        )
    if rng.random() < cfg.error_rate:
        raise _Reject(500, "The server had an error while processing your request.", None)
    return verdict.headers


def _choice_versions(version: str | None, n: int) -> list[str | None]:
    """The version each choice is for: ``X-Arboris-Version: 1,2,3`` names one per choice."""
    named = (version or "").split(",")
    if n > 1 and len(named) == n:
        return list(named)
    return [version if i == 0 else f"{version}/{i}" for i in range(n)]


def _reply_tokens(cfg: MockConfig, digest: str, version: str | None) -> list[str]:
    # Text depends on prompt, seed and version only, so retries of a version get the same
    # text while parallel versions of one prompt differ, as sampled LLM replies do.
    text_rng = random.Random(f"{cfg.seed}/{digest}/{version}")
    if cfg.reply is not None:
        return tokens(cfg.reply)
    if cfg.reply_format == "json":
        return tokens(pseudo_json(text_rng, cfg.output_tokens))
    return tokens(pseudo_text(text_rng, cfg.output_tokens))


def _plan(
    state: State, body: dict[str, Any], digest: str, version: str | None, rng: random.Random
) -> Plan:
    cfg = state.config
    disconnect = rng.random() < cfg.disconnect_rate and bool(body.get("stream"))
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    choices, finishes = [], []
    for choice_version in _choice_versions(version, _choices(body)):
        full = _reply_tokens(cfg, digest, choice_version)
        kept = full[:cap] if cap else full
        choices.append(kept)
        finishes.append("length" if len(kept) < len(full) else "stop")
    steps = max(map(len, choices))
    cut_after = rng.randint(1, max(1, steps - 1)) if disconnect and steps else None
    return Plan(choices, finishes, cut_after, rng, prompt_tokens(body["messages"]), digest)


def _straggler(cfg: MockConfig, entry: dict[str, Any]) -> bool:
    """Is this request one of the heavy tail? Drawn from a generator of its own (turning
    the tail on changes no other draw), keyed by what the request is — run, version,
    attempt, hedge, from the X-Arboris-* headers — when the client says, else by its
    arrival number: so the same request is slow however requests interleave, and two
    runs with the same ids meet the same stragglers (side-by-side benchmarks)."""
    if cfg.straggler_rate <= 0:
        return False
    who = entry["run"] and "/".join(str(entry[k]) for k in ("run", "version", "attempt", "hedge"))
    key = f"{cfg.seed}/tail/{who}" if who else f"{cfg.seed}/{entry['n']}/tail"
    return random.Random(key).random() < cfg.straggler_rate


async def _paced(
    state: State, request: web.Request, plan: Plan, entry: dict[str, Any]
) -> AsyncIterator[tuple[int, int]]:
    """Yield the plan's steps in batches (``start, stop``: slice each choice's tokens),
    each when it is due — after the prompt is read (``prefill``) and the time to first
    token.

    Deadlines are absolute (not sleep-after-write) so event-loop lag under load does not
    add up; the load factor is re-read at every step, as a batch's size changes over time.
    """
    cfg, loop = state.config, asyncio.get_running_loop()

    def jitter() -> float:
        return 1.0 + plan.rng.uniform(-cfg.jitter, cfg.jitter) if cfg.jitter else 1.0

    due = (
        state.read_prompt(plan, entry) + cfg.ttft_s * plan.slow * state.latency_factor() * jitter()
    )
    sent, step, total = 0, 1, plan.steps
    while True:
        # sleep(0) when late still lets other streams run between catch-up writes
        await asyncio.sleep(max(0.0, due - loop.time()))
        if _client_gone(request):
            raise _ClientGone
        stop = min(total, sent + step)
        if entry["first_token_s"] is None:
            entry["first_token_s"] = state.now()
        yield sent, stop
        sent = stop
        if sent >= total:
            return
        # floor: jitter=1 can draw a factor of exactly 0
        itl = max(1e-9, plan.slow * state.latency_factor() * jitter() / cfg.tokens_per_s)
        step = min(total - sent, max(1, math.ceil(state.write_interval() / itl)))
        due += step * itl


def _usage(entry: dict[str, Any]) -> dict[str, Any]:
    """What the request is billed: its prompt once (whatever ``n``), every choice's tokens."""
    prompt, completion = entry["prompt_tokens"], entry["tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": entry["cached_tokens"]},
    }


async def _complete(
    state: State, request: web.Request, body: dict[str, Any], plan: Plan, entry: dict[str, Any]
) -> web.StreamResponse:
    async for start, stop in _paced(state, request, plan, entry):
        entry["tokens"] += sum(len(c[start:stop]) for c in plan.choices)
    payload = {
        "id": f"chatcmpl-mock-{entry['n']}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or state.config.model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(choice)},
                "logprobs": None,
                "finish_reason": finish,
            }
            for index, (choice, finish) in enumerate(
                zip(plan.choices, plan.finish_reasons, strict=True)
            )
        ],
        "usage": _usage(entry),
    }
    resp = web.json_response(
        payload, headers=plan.headers, dumps=lambda o: json.dumps(o, ensure_ascii=False)
    )
    return await _send(request, resp)


def _step_events(
    chunks: _Chunks, plan: Plan, start: int, stop: int, entry: dict[str, Any]
) -> bytes:
    """The events of one step: each choice's new tokens, and the end of a choice that ends
    in it (choices of an ``n`` request arrive interleaved, as OpenAI streams them)."""
    out = b""
    for index, (choice, finish) in enumerate(zip(plan.choices, plan.finish_reasons, strict=True)):
        part = choice[start:stop]
        if part:
            entry["tokens"] += len(part)
            out += chunks.delta({"content": "".join(part)}, index=index)
        if start < len(choice) <= stop or (start == 0 and not choice):  # ends in this step
            out += chunks.delta({}, finish, index=index)
    return out


async def _stream(
    state: State, request: web.Request, body: dict[str, Any], plan: Plan, entry: dict[str, Any]
) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    resp = web.StreamResponse(status=200, headers={**headers, **plan.headers})
    chunks = _Chunks(
        f"chatcmpl-mock-{entry['n']}", int(time.time()), body.get("model") or state.config.model
    )
    try:
        # Headers go out at once, as real servers do; the time to first token is in the body.
        await resp.prepare(request)
        role = b"".join(
            chunks.delta({"role": "assistant", "content": ""}, index=i)
            for i in range(len(plan.choices))
        )
        async for start, stop in _paced(state, request, plan, entry):
            if plan.cut_after is not None:
                stop = min(stop, plan.cut_after)
            out, role = role, b""  # the role chunks go out with the first tokens
            await resp.write(out + _step_events(chunks, plan, start, stop, entry))
            if stop == plan.cut_after:
                _cut(request, resp)
        tail = b""
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += chunks.usage(_usage(entry))
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


async def _acquire(state: State) -> None:
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
    state: State, request: web.Request, body: dict[str, Any], plan: Plan, entry: dict[str, Any]
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
    state = request.app[STATE]
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
    state: State, request: web.Request, entry: dict[str, Any]
) -> web.StreamResponse:
    cfg = state.config
    _check_auth(cfg, request)
    body = _parse_body(await request.read())
    digest = prompt_digest(body["messages"])
    entry.update(stream=bool(body.get("stream")), prompt_sha=digest[:12], choices=_choices(body))
    _check_n(cfg, body)
    n = entry["n"]
    # One generator per request, drawn in a fixed order: error, disconnect, cut, jitter.
    rng = random.Random(f"{cfg.seed}/{n}")
    headers = _admit(state, n, rng, body)
    plan = _plan(state, body, digest, entry["version"], rng)
    plan.headers = headers
    if _straggler(cfg, entry):
        plan.slow = cfg.straggler_factor
        entry["straggler"] = True
    return await _serve_admitted(state, request, body, plan, entry)


async def _models(request: web.Request) -> web.Response:
    cfg = request.app[STATE].config
    model = {"id": cfg.model, "object": "model", "created": 0, "owned_by": "arboris-mock"}
    return web.json_response({"object": "list", "data": [model]})


async def _stats(request: web.Request) -> web.Response:
    with_log = request.query.get("log", "1").lower() not in ("0", "false", "no")
    return web.json_response(request.app[STATE].snapshot(with_log))


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


# --------------------------------------------------------------------------- app and serving


def make_app(config: MockConfig | None = None) -> web.Application:
    """The aiohttp application of the mock server (run it with any aiohttp runner)."""
    # Room for long novel prompts (aiohttp's default cap is 1 MiB).
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[STATE] = State(config or MockConfig())
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/stats/reset", _stats_reset)
    return app


def root_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start(config: MockConfig, host: str, port: int) -> tuple[web.AppRunner, int]:
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
    runner, real_port = await start(config or MockConfig(), host, port)
    try:
        if on_ready is not None:
            on_ready(root_url(host, real_port) + "/v1")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
