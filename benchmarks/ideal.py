"""(c) Parallel wall time against the ideal when N ≤ C: all versions in one round.

With N ≤ C the best possible wall time is one version's latency L, so wall / ideal shows
what the engine adds per run (client set-up, scheduling, event handling). L is measured
per run (the mean version duration), and also compared with the mock's configured latency.

    .venv/bin/python benchmarks/ideal.py [--repeats 5]
"""

from __future__ import annotations

import statistics

from _common import run_on_mock

from arboris_nb import LLMConfig, sweep

TTFT_S, TOKENS_PER_S, TOKENS = 0.3, 100.0, 101  # ≈ 1.3 s a version
LATENCY_S = TTFT_S + (TOKENS - 1) / TOKENS_PER_S
SIZES = ((1, 10), (2, 10), (3, 10), (5, 10), (10, 10), (3, 3))


async def measure(base_url: str, repeats: int) -> None:
    llm = LLMConfig(base_url=base_url, model="mock-model")
    print(
        f"{'N':>3} {'C':>3} {'wall s':>7} {'ideal s':>8} {'wall/ideal':>10} {'wall/config L':>13}"
    )
    for n, c in SIZES:
        result = await sweep(
            versions=n, concurrency=[c], repeats=repeats, include_serial=False, llm=llm,
            progress=False,
        )  # fmt: skip
        runs = result.runs
        wall = statistics.median(runs["elapsed_s"])
        ideal = statistics.median(runs["ideal_s"])
        ratio = statistics.median(runs["wall_over_ideal"])
        print(f"{n:>3} {c:>3} {wall:>7.3f} {ideal:>8.3f} {ratio:>10.3f} {wall / LATENCY_S:>13.3f}")


def main() -> None:
    run_on_mock(
        measure,
        description=__doc__.splitlines()[0],
        repeats=5,
        ttft_s=TTFT_S,
        tokens_per_s=TOKENS_PER_S,
        tokens=TOKENS,
        what="; medians",
    )


if __name__ == "__main__":
    main()
