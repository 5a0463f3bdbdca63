"""What each attempt was billed: the server's usage, its share of a request that carried
several versions (``n``), or — when a stream broke before the usage came — an estimate,
labelled as one.

The rules, so that every token a server bills lands in some attempt:

* usage sent: the attempt has the server's counts. One request for ``n`` versions has one
  usage; each version's attempt gets a share — the prompt split evenly (it was billed
  once), the output split by the characters each choice streamed — and the shares add up
  to the request's exact counts.
* refused before any text (an HTTP error status, or no connection at all): nothing is
  billed, so the counts are 0 — providers do not bill a request they refused.
* anything else without usage (a stream cut, a stall, a cancel): the model worked on it,
  so the attempt is billed an estimate (``usage_estimated=True``): the prompt's size as
  the server reported it for another request of the same run (the same messages, so the
  same count; filled in when the version ends if no report had come yet), and the chunks
  counted (a chunk is about a token). Without any report the input stays unknown (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .backends.base import Usage
from .errors import BackendError, ConnectionFailed
from .pricing import Price
from .results import Attempt

__all__ = ["Tally", "bill", "fill_estimates", "not_billed", "split"]


@dataclass
class Tally:
    """What one request streamed, per choice (one choice unless fanned out by ``n``)."""

    choices: int = 1
    chunks: list[int] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    usage: Usage | None = None

    def __post_init__(self) -> None:
        self.chunks = [0] * self.choices
        self.chars = [0] * self.choices

    def add(self, choice: int, text: str) -> None:
        self.chunks[choice] += 1
        self.chars[choice] += len(text)


def split(total: int | None, weights: Sequence[int]) -> list[int | None]:
    """``total`` in whole shares by ``weights`` (largest remainder: the shares add up to
    ``total`` exactly); even shares when every weight is 0; None shares for None."""
    if total is None:
        return [None] * len(weights)
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    # The tokens the floors left over go to the largest remainders, earliest first.
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return list(shares)


def not_billed(error: BaseException | None, tally: Tally) -> bool:
    """True when the request was refused before any text: nothing to pay for."""
    if any(tally.chunks) or error is None:
        return False
    return isinstance(error, ConnectionFailed) or (
        isinstance(error, BackendError) and error.status is not None
    )


def bill(
    attempts: Sequence[Attempt],
    tally: Tally,
    *,
    error: BaseException | None,
    prompt_tokens: int | None,
    price: Price | None,
) -> None:
    """Set the usage and cost of the attempts one request made (one per choice)."""
    n = len(attempts)
    even = [1] * n
    usage = tally.usage
    if usage is not None:
        inputs = split(usage.input_tokens, even)
        cached = split(usage.cached_input_tokens, even)
        outputs = split(usage.output_tokens, tally.chars)
    elif not_billed(error, tally):
        inputs, cached, outputs = [0] * n, [0] * n, [0] * n
    else:
        inputs, cached, outputs = split(prompt_tokens, even), [None] * n, list(tally.chunks)
    for attempt, i, c, o in zip(attempts, inputs, cached, outputs, strict=True):
        attempt.input_tokens, attempt.cached_input_tokens, attempt.output_tokens = i, c, o
        attempt.usage_estimated = usage is None and not not_billed(error, tally)
        attempt.choices = n
        attempt.cost = None if price is None else price.cost(i, o, c)


def fill_estimates(
    attempts: Sequence[Attempt], prompt_tokens: int | None, price: Price | None
) -> None:
    """Give estimated attempts billed before the prompt's size was known their input now
    (an even share of it for an attempt that carried several choices)."""
    if prompt_tokens is None:
        return
    for attempt in attempts:
        if attempt.usage_estimated and attempt.input_tokens is None:
            attempt.input_tokens = round(prompt_tokens / attempt.choices)
            if price is not None:
                attempt.cost = price.cost(attempt.input_tokens, attempt.output_tokens)
