"""Run a coroutine to completion from sync code, even inside a running loop.

Inside a notebook cell a loop is already running, so ``asyncio.run`` is refused there.
Instead of patching asyncio (nest_asyncio — archived, breaks anyio/httpx), the coroutine
runs on a private loop in a worker thread, the way ``jupyter_core.utils.run_sync`` does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` and return its result; Ctrl-C cancels it and re-raises."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    return _run_in_thread(coro)


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed back to the caller's thread below
            outcome["error"] = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=target, name="arboris-sync", daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task.cancel)
        thread.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result
