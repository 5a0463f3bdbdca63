"""generate_versions_sync in a plain script and inside a running loop (a notebook cell)."""

from __future__ import annotations

import asyncio
import threading

from arboris_nb import SimulatedLLM, WriterSettings, generate_versions_sync

FAST = {"ttft_s": 0.0, "tokens_per_s": 1e6}


def test_sync_without_a_loop() -> None:
    run = generate_versions_sync(
        "p", settings=WriterSettings(version_count=2), llm=SimulatedLLM(**FAST)
    )
    assert len(run.ok) == 2


async def test_sync_inside_a_running_loop_uses_a_private_loop_in_a_thread() -> None:
    outer = asyncio.get_running_loop()
    seen: list[tuple[int, bool]] = []

    def on_event(event: object) -> None:
        seen.append((threading.get_ident(), asyncio.get_running_loop() is outer))

    run = generate_versions_sync(
        "p", settings=WriterSettings(version_count=3), llm=SimulatedLLM(**FAST), on_event=on_event
    )
    assert len(run.ok) == 3
    assert {same for _, same in seen} == {False}
    assert threading.get_ident() not in {tid for tid, _ in seen}
    assert not asyncio.iscoroutinefunction(generate_versions_sync)


def test_no_nest_asyncio_patch() -> None:
    import arboris_nb  # noqa: F401

    assert not hasattr(asyncio, "_nest_patched")
    assert asyncio.run.__module__ == "asyncio.runners"
