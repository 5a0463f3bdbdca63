"""``MockConfig``: every option of the mock server, keyword-only and validated."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["MockConfig", "ReplyFormat", "is_int"]

ReplyFormat = Literal["text", "json"]


def _check(ok: bool, name: str, allowed: str, value: object) -> None:
    if not ok:
        raise ValueError(f"MockConfig.{name} must be {allowed}, got {value!r}")


def is_int(value: object) -> bool:
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
    prefill: float | None = None  # prompt tokens read per second, server-wide (None: instant)
    prompt_cache: bool = False  # a prompt read before is cached (and reported as such)
    reject_n: bool = False  # answer n > 1 with 400, like providers that take one choice
    # A heavy tail: this fraction of requests (drawn per request) is straggler_factor
    # times slower — first token and every token after it.
    straggler_rate: float = 0.0
    straggler_factor: float = 5.0
    seed: int = 0
    capacity: int | None = None
    slowdown: float = 0.0
    max_concurrent: int | None = None
    rpm_limit: int | None = None
    retry_after_s: float = 1.0
    window_s: float | None = None
    request_budget: int | None = None
    token_budget: int | None = None
    budget_period_s: float = 60.0
    ratelimit_headers: bool = True
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
        _check(is_int(out) and out >= 1, "output_tokens", "an int >= 1", out)
        _check(_is_num(self.jitter) and 0 <= self.jitter <= 1, "jitter", "in [0, 1]", self.jitter)
        pf = self.prefill
        _check(pf is None or (_is_num(pf) and pf > 0), "prefill", "None or a number > 0", pf)
        for name in ("prompt_cache", "reject_n"):
            _check(
                isinstance(getattr(self, name), bool), name, "True or False", getattr(self, name)
            )
        rate, factor = self.straggler_rate, self.straggler_factor
        _check(_is_num(rate) and 0 <= rate <= 1, "straggler_rate", "in [0, 1]", rate)
        _check(_is_num(factor) and factor >= 1, "straggler_factor", "a number >= 1", factor)
        _check(is_int(self.seed), "seed", "an int", self.seed)

    def _validate_limits(self) -> None:
        for name in ("capacity", "max_concurrent", "rpm_limit", "request_budget", "token_budget"):
            value = getattr(self, name)
            _check(value is None or (is_int(value) and value >= 1), name, "None or >= 1", value)
        win = self.window_s
        _check(win is None or (_is_num(win) and win > 0), "window_s", "None or a number > 0", win)
        period = self.budget_period_s
        _check(_is_num(period) and period > 0, "budget_period_s", "a number > 0", period)
        headers = self.ratelimit_headers
        _check(isinstance(headers, bool), "ratelimit_headers", "True or False", headers)
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
            _check(is_int(n) and n >= 1, "fail_requests", "keyed by request number >= 1", n)
            ok = is_int(status) and 400 <= status <= 599
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
