"""The mock's reply text: deterministic pseudo-prose (or chapter JSON) split into tokens."""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

__all__ = ["message_text", "prompt_digest", "prompt_tokens", "pseudo_json", "pseudo_text", "tokens"]

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


def tokens(text: str) -> list[str]:
    """Split ``text`` into tokens: a word plus its trailing whitespace (they join back exactly)."""
    parts = _TOKEN_RE.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    if parts and lead:
        parts[0] = lead + parts[0]
    return parts


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


def pseudo_text(rng: random.Random, n_tokens: int) -> str:
    return _render(_word_plan(rng, n_tokens), n_tokens)


def pseudo_json(rng: random.Random, n_tokens: int) -> str:
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
        diff = n_tokens - len(tokens(text))
        if diff == 0 or (m == 1 and diff < 0):
            break
        m = max(1, min(len(content_plan), m + diff))
    return dump(m)


def message_text(messages: list[Any]) -> str:
    parts: list[str] = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def prompt_digest(messages: list[Any]) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def prompt_tokens(messages: list[Any]) -> int:
    """The prompt's size as the mock counts it: words of the messages (at least 1)."""
    return max(1, len(_WORD_RE.findall(message_text(messages))))
