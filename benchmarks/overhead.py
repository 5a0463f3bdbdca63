"""(b) Our overhead against the hand-written baseline, side by side in one process.

Baseline: raw ``AsyncOpenAI`` streaming + ``asyncio.gather`` under an ``asyncio.Semaphore``
— what one would write without arboris_nb. Ours: ``generate_versions`` with the same N and
C through ``OpenAIBackend``. Both create their client inside the timed region (as each run
does), hit the same mock server (in its own process, so it does not share our GIL), and
alternate run by run after a warm-up of each. Wall time: median of the repeats. Peak memory:
tracemalloc, in separate alternating runs (tracing slows Python down, so it is never on
during the wall-time runs).

Then the engine's own cost without any network: the same N and C on an in-memory stream of
CHUNKS text deltas per version (what the mock sends at these settings), ``generate_versions``
against a hand-written loop over the same stream; CPU time, alternating. On a busy machine
the ratios above move by several percent from run to run; this figure does not.
``--engine-only`` prints just that (seconds, no mock server).

    .venv/bin/python benchmarks/overhead.py [--repeats 7] [--sizes 500x100,10x10] [--engine-only]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import openai
from _common import machine, server_view

from arboris_nb import FixedLimit, LLMConfig, Usage, WriterSettings, generate_versions
from arboris_nb.mockserver import MockServer

PROMPT = "Write chapter one: the lighthouse keeper finds a letter in the storm."
TTFT_S, TOKENS_PER_S, TOKENS = 0.2, 100.0, 101  # ≈ 1.2 s a request
LATENCY_S = TTFT_S + (TOKENS - 1) / TOKENS_PER_S

Runner = Callable[[str, int, int], Awaitable[int]]


async def raw_baseline(base_url: str, n: int, c: int) -> int:
    """The hand-written version: returns the number of non-empty replies."""
    # A generous connect timeout: with hundreds of connects at once on a busy machine,
    # the SDK's default 5 s can fire before the mock accepts (a timeout costs no CPU,
    # so this does not favour either side).
    client = openai.AsyncOpenAI(
        api_key="not-needed",
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(600.0, connect=60.0),
    )
    semaphore = asyncio.Semaphore(c)

    async def one() -> str:
        async with semaphore:
            stream = await client.chat.completions.create(
                model="mock-model",
                messages=[{"role": "user", "content": PROMPT}],
                temperature=0.75,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = []
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
            return "".join(parts)

    try:
        texts = await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.close()
    return sum(bool(t) for t in texts)


async def ours(base_url: str, n: int, c: int) -> int:
    """generate_versions with the run store and reply cache off (what sweep() uses)."""
    return await _generate(base_url, n, c, store=False, cache=False)


async def ours_with_store(base_url: str, n: int, c: int) -> int:
    """generate_versions with its defaults: every version saved to the run store."""
    return await _generate(base_url, n, c)


async def _generate(base_url: str, n: int, c: int, **options: Any) -> int:
    run = await generate_versions(
        PROMPT,
        settings=WriterSettings(version_count=min(n, 10), max_parallel_requests=min(c, 10)),
        llm=LLMConfig(base_url=base_url, model="mock-model"),
        indices=range(1, n + 1),
        limiter=FixedLimit(c),
        raise_on_all_failed=False,
        **options,
    )
    return len(run.ok)


def timed(fn: Runner, base_url: str, n: int, c: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one run. CPU time of this process is the steadier measure of
    what the client adds when other programs share the machine."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    ok = asyncio.run(fn(base_url, n, c))
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    if ok != n:
        raise SystemExit(f"{fn.__name__}: only {ok}/{n} requests succeeded")
    return elapsed, used


def peak(fn: Runner, base_url: str, n: int, c: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        asyncio.run(fn(base_url, n, c))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def rotations(items: tuple[Runner, ...], i: int) -> tuple[Runner, ...]:
    """Round i's order: rotate so that each contender goes first equally often."""
    k = i % len(items)
    return items[k:] + items[:k]


def compare(base_url: str, n: int, c: int, repeats: int, mem_repeats: int) -> None:
    contenders: tuple[Runner, ...] = (raw_baseline, ours, ours_with_store)
    for fn in contenders:  # warm: imports, connection code paths, caches
        timed(fn, base_url, n, c)
    walls: dict[str, list[float]] = {fn.__name__: [] for fn in contenders}
    cpus: dict[str, list[float]] = {fn.__name__: [] for fn in contenders}
    for i in range(repeats):
        for fn in rotations(contenders, i):
            wall, cpu = timed(fn, base_url, n, c)
            walls[fn.__name__].append(wall)
            cpus[fn.__name__].append(cpu)
    peaks: dict[str, list[int]] = {fn.__name__: [] for fn in contenders}
    for i in range(mem_repeats):
        for fn in rotations(contenders, i):
            peaks[fn.__name__].append(peak(fn, base_url, n, c))
    ideal = -(-n // c) * LATENCY_S
    raw_wall = statistics.median(walls["raw_baseline"])
    raw_min, raw_cpu = min(walls["raw_baseline"]), statistics.median(cpus["raw_baseline"])
    raw_mem = max(peaks["raw_baseline"])
    print(
        f"N={n} C={c}: ideal ⌈N/C⌉·L = {ideal:.2f} s; raw baseline wall {raw_wall:.3f} s "
        f"(raw/ideal {raw_wall / ideal:.3f}), CPU {raw_cpu:.3f} s, peak {raw_mem / 1e6:.2f} MB"
    )
    for name in ("ours", "ours_with_store"):
        wall, mem = statistics.median(walls[name]), max(peaks[name])
        cpu = statistics.median(cpus[name])
        print(
            f"  {name:<16} wall ratio {wall / raw_wall:.3f} (median), "
            f"{min(walls[name]) / raw_min:.3f} (best)   CPU ratio {cpu / raw_cpu:.3f}   "
            f"peak {mem / 1e6:6.2f} MB ratio {mem / raw_mem:.3f}"
        )
    spread = {k: f"{min(v):.3f}–{max(v):.3f}" for k, v in walls.items()}
    print(f"  wall range over {repeats} repeats: {spread}")


CHUNKS = 42  # text deltas the mock sends per request at the settings above


async def _deltas() -> AsyncIterator[str]:
    for i in range(CHUNKS):
        if i % 4 == 0:  # as from a socket: a loop round trip now and then
            await asyncio.sleep(0)
        yield "two words "


class _InMemory:
    """A backend whose stream is :func:`_deltas`: no HTTP, no SDK, only the engine."""

    model = "in-memory"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[_InMemory]:
        yield self

    async def stream(self, request: object) -> AsyncIterator[str | Usage]:
        async for delta in _deltas():
            yield delta
        yield Usage(CHUNKS * 2)


async def hand_loop(n: int, c: int) -> None:
    semaphore = asyncio.Semaphore(c)

    async def one() -> str:
        async with semaphore:
            return "".join([delta async for delta in _deltas()])

    await asyncio.gather(*(one() for _ in range(n)))


async def engine(n: int, c: int, **options: Any) -> None:
    run = await generate_versions(
        PROMPT,
        settings=WriterSettings(version_count=min(n, 10), max_parallel_requests=min(c, 10)),
        llm=_InMemory(),
        indices=range(1, n + 1),
        limiter=FixedLimit(c),
        raise_on_all_failed=False,
        cache=False,
        **options,
    )
    assert len(run.ok) == n


def engine_cost(n: int, c: int, repeats: int) -> None:
    """The engine's own CPU per version over a hand-written loop, no network."""
    contenders: dict[str, Callable[[], Awaitable[None]]] = {
        "hand": lambda: hand_loop(n, c),
        "ours": lambda: engine(n, c, store=False),
        "ours_with_store": lambda: engine(n, c),
    }
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(repeats + 1):  # round 0 warms up
        for name, make in contenders.items() if i % 2 else reversed(contenders.items()):
            gc.collect()
            start = time.process_time()
            asyncio.run(make())  # type: ignore[arg-type]
            if i:
                cpu[name].append(time.process_time() - start)
    hand = statistics.median(cpu["hand"])
    costs = "   ".join(
        f"{name} +{(statistics.median(cpu[name]) - hand) / n * 1e6:.1f} µs/version"
        for name in ("ours", "ours_with_store")
    )
    print(f"  engine's own CPU, no network (N={n} C={c}, {CHUNKS} deltas a version, median of "
          f"{repeats}): hand-written loop {hand / n * 1e6:.1f} µs/version; {costs}")  # fmt: skip


def sizes(raw: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (part.split("x") for part in raw.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mem-repeats", type=int, default=2)
    parser.add_argument("--sizes", type=sizes, default=[(500, 100), (10, 10)], metavar="NxC,…")
    parser.add_argument("--engine-only", action="store_true", help="only the no-network cost")
    args = parser.parse_args()
    # The default run store goes to a throw-away file, never the user's; no reply cache.
    os.environ["ARBORIS_STORE"] = os.path.join(tempfile.mkdtemp(), "runs.sqlite3")
    os.environ.pop("ARBORIS_CACHE", None)
    os.environ.pop("ARBORIS_CACHE_URL", None)
    print(machine())
    if args.engine_only:
        for n, c in args.sizes:
            engine_cost(n, c, args.repeats)
        return
    print(f"mock (own process): ttft {TTFT_S} s, {TOKENS} tokens at {TOKENS_PER_S:g}/s ≈ "
          f"{LATENCY_S:.2f} s a request; wall = median of {args.repeats}, alternating")  # fmt: skip
    server = MockServer(
        ttft_s=TTFT_S, tokens_per_s=TOKENS_PER_S, output_tokens=TOKENS, process=True
    )
    with server as base_url:
        for n, c in args.sizes:
            server.reset()
            compare(base_url, n, c, args.repeats, args.mem_repeats)
            print(f"  {server_view(server.stats(), LATENCY_S)}")
            engine_cost(n, c, args.repeats)


if __name__ == "__main__":
    main()
