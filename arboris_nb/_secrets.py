"""Keep keys out of text that leaves the process (errors, logs, stores)."""

from __future__ import annotations

from collections.abc import Iterable

from .config import mask_key

__all__ = ["redact"]


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret in ``text`` by its masked id."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, mask_key(secret))
    return text
