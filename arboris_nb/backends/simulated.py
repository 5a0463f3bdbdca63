"""A deterministic offline model: no key, no network, same engine path as the real one.

Text is seeded by the prompt, the version index and ``seed``, so a run is reproducible
and two versions differ. ``lang="zh"`` (the default when ``ARBORIS_LANG=zh``) writes
Chinese prose instead, streamed two characters per token (about what a real tokenizer
gives for Chinese), so the live view and the fonts can be tried on the language the kit
is for. Latency follows a small model — time to first token, tokens per
second, multiplicative jitter — on ``asyncio.sleep``, so a fake loop clock makes it exact.
Faults: ``fail_versions`` fail on every attempt; ``fail_rate`` fails single attempts at
random (transient, so retries can succeed). A heavy tail: ``straggler_rate`` makes that
fraction of requests (drawn per request) ``straggler_factor`` times slower, and the first
request of each version in ``stragglers`` always.

Usage counts words: the prompt's words are its input tokens (as the mock server counts
them), the streamed words its output tokens. A request for ``n > 1`` choices streams them
interleaved after one time to first token, one token of each choice per step, and its
usage counts the prompt once; a choice whose version fails ends without text (all
failing: the request fails).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from .. import _messages
from ..errors import BackendError, ConfigError, ServerError
from .base import ChatRequest, ChoiceDelta, ChoiceEnd, Served, StreamItem, Usage

__all__ = ["SimulatedLLM", "simulated_text"]

_WORDS = (
    "the lantern rain harbor old city wind letter silence road river night her his they "
    "and but when while beneath across gate tower memory promise shadow ember stone bell "
    "ship archive map stranger sister captain voice door winter garden smoke iron glass "
    "remembered waited whispered turned opened carried followed listened burned crossed "
    "slowly quietly again before after almost never still only"
).split()

# Chinese words (mostly two characters, as in written prose) on the same themes.
_ZH_WORDS = (
    "灯塔 雨夜 港口 旧城 海风 来信 沉默 小路 河流 夜色 她 他 他们 于是 然而 就在 "
    "城门 钟楼 记忆 诺言 影子 余烬 石阶 钟声 渡船 档案 地图 陌生人 姐姐 船长 声音 "
    "木门 冬天 花园 炊烟 铁锚 玻璃 想起 等待 低声说 转过身 打开 带着 跟着 听见 "
    "燃烧 穿过 慢慢地 静静地 又一次 很久以前 后来 几乎 从未 仍然 只是"
).split()
LANGS = ("en", "zh")

Reply = str | Callable[[ChatRequest], str]


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def simulated_text(prompt: str, index: int, tokens: int, seed: int = 0, lang: str = "en") -> str:
    """Deterministic pseudo-prose of ``tokens`` words for a prompt and version index.

    ``lang="zh"``: Chinese prose of about ``2 * tokens`` characters (``tokens`` tokens of
    two characters each, as :class:`SimulatedLLM` streams it)."""
    if lang == "zh":
        return _chinese_text(prompt, index, tokens, seed)
    rng = _rng("text", seed, prompt, index)
    words: list[str] = []
    sentence = 0
    for i in range(tokens):
        word = rng.choice(_WORDS)
        words.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        if sentence > 6 and (rng.random() < 0.2 or i == tokens - 1):
            words[-1] += "."
            sentence = 0
    if words and not words[-1].endswith("."):
        words[-1] += "."
    return f"Version {index}. " + " ".join(words)


def _chinese_text(prompt: str, index: int, tokens: int, seed: int) -> str:
    rng = _rng("text-zh", seed, prompt, index)
    parts: list[str] = []
    size = clause = 0
    while size < 2 * tokens:
        word = rng.choice(_ZH_WORDS)
        parts.append(word)
        size += len(word)
        clause += 1
        if clause > 3 and rng.random() < 0.3:  # a comma or a full stop every few words
            mark = "。" if rng.random() < 0.4 else "，"
            parts.append(mark)
            size += 1
            clause = 0
    body = "".join(parts).rstrip("，。")
    return f"版本{index}。" + (body + "。" if body else "")


@dataclass
class SimulatedLLM:
    """The built-in offline backend (a ``Backend`` and its own ``Connection``)."""

    ttft_s: float = 0.05
    tokens_per_s: float = 200.0
    output_tokens: int = 80
    jitter: float = 0.0
    seed: int = 0
    fail_versions: Collection[int] = ()
    fail_rate: float = 0.0
    fail_error: type[BackendError] = ServerError
    straggler_rate: float = 0.0
    straggler_factor: float = 5.0
    stragglers: Collection[int] = ()
    reply: Reply | None = None
    model: str = "simulated"
    lang: str = field(default_factory=_messages.lang)  # "en" or "zh" (ARBORIS_LANG)
    calls: list[ChatRequest] = field(default_factory=list, repr=False)

    @property
    def limit_endpoint(self) -> str | None:
        """Where ``auto``'s learned limit is remembered (:mod:`arboris_nb.limit_memory`).
        A subclass answers differently (a cap, stalls), so it is not this endpoint: None,
        unless it names its own."""
        return f"simulated|{self.model}" if type(self) is SimulatedLLM else None

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.tokens_per_s <= 0 or self.output_tokens < 0:
            raise ConfigError(
                "SimulatedLLM needs ttft_s >= 0, tokens_per_s > 0, output_tokens >= 0"
            )
        if not 0.0 <= self.jitter < 1.0 or not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError("SimulatedLLM jitter must be in [0, 1) and fail_rate in [0, 1]")
        if not 0.0 <= self.straggler_rate <= 1.0 or not self.straggler_factor >= 1.0:
            raise ConfigError(
                "SimulatedLLM straggler_rate must be in [0, 1] and straggler_factor >= 1, got "
                f"{self.straggler_rate} and {self.straggler_factor}"
            )
        if self.lang not in LANGS:
            raise ConfigError(f"SimulatedLLM lang must be 'en' or 'zh', got {self.lang!r}")

    @asynccontextmanager
    async def open(self) -> AsyncIterator[SimulatedLLM]:
        yield self

    def _reply_text(self, request: ChatRequest) -> str:
        if callable(self.reply):
            return self.reply(request)
        if self.reply is not None:
            return self.reply
        return self.prose(request)

    def prose(self, request: ChatRequest) -> str:
        """The simulated chapter text for ``request`` (in this model's ``lang``)."""
        return simulated_text(
            request.prompt, request.version_index, self.output_tokens, self.seed, self.lang
        )

    def _tokens(self, text: str) -> Iterator[str]:
        if self.lang == "zh":  # no spaces to split at: two characters a token
            yield from (text[i : i + 2] for i in range(0, len(text), 2))
            return
        # Keep each word's trailing space with it so the deltas re-join to the exact text.
        start = 0
        for i, char in enumerate(text):
            if char == " ":
                yield text[start : i + 1]
                start = i + 1
        if start < len(text):
            yield text[start:]

    def _slowness(self, request: ChatRequest, rng: random.Random) -> float:
        """How many times slower this request is: ``straggler_factor`` for a straggler."""
        first = request.attempt == 1 and not request.hedge
        drawn = self.straggler_rate > 0 and rng.random() < self.straggler_rate
        slow = drawn or (first and request.version_index in self.stragglers)
        return self.straggler_factor if slow else 1.0

    def _fails(self, request: ChatRequest) -> bool:
        if request.version_index in self.fail_versions:
            return True
        rng = _rng("fault", self.seed, request.prompt, request.version_index, request.attempt)
        return rng.random() < self.fail_rate

    def _spread(self, request: ChatRequest) -> Callable[[float], float]:
        # A hedge draws its own latency: a duplicate of a slow request need not be slow.
        rng = _rng(
            "latency",
            self.seed,
            request.prompt,
            request.version_index,
            request.attempt,
            *(("hedge",) if request.hedge else ()),
        )
        slow = self._slowness(request, rng)

        def spread(seconds: float) -> float:
            return slow * seconds * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))

        return spread

    @staticmethod
    def _prompt_tokens(request: ChatRequest) -> int:
        return max(1, sum(len(m.get("content", "").split()) for m in request.messages))

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        self.calls.append(request)
        if request.n > 1:
            async for item in self._choices(request):
                yield item
            return
        spread = self._spread(request)
        yield Served(key_id="simulated")
        await asyncio.sleep(spread(self.ttft_s))
        if self._fails(request):
            raise self.fail_error(
                f"simulated failure of version {request.version_index}", status=500
            )
        count = 0
        for token in self._tokens(self._reply_text(request)):
            if count:
                await asyncio.sleep(spread(1.0 / self.tokens_per_s))
            count += 1
            yield token
        yield Usage(count, self._prompt_tokens(request), 0)

    async def _choices(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        """An ``n > 1`` request: the choices' tokens interleaved, one usage for all."""
        spread = self._spread(request)
        yield Served(key_id="simulated")
        await asyncio.sleep(spread(self.ttft_s))  # one prompt to read for every choice
        each = [
            replace(request, version_index=v, choice_versions=()) for v in request.choice_versions
        ]
        if all(self._fails(r) for r in each):
            raise self.fail_error(
                f"simulated failure of versions {request.choice_versions}", status=500
            )
        texts = [[] if self._fails(r) else list(self._tokens(self._reply_text(r))) for r in each]
        count = 0
        for step in range(max(map(len, texts))):
            if step:
                await asyncio.sleep(spread(1.0 / self.tokens_per_s))
            for index, tokens in enumerate(texts):
                if step < len(tokens):
                    count += 1
                    yield ChoiceDelta(index, tokens[step])
                if step == len(tokens) - 1 or (step == 0 and not tokens):
                    yield ChoiceEnd(index, "stop" if tokens else "error")
        yield Usage(count, self._prompt_tokens(request), 0)
