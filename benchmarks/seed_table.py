"""(a) The seed's table at a scaled latency: serial vs parallel for 3 and 2 versions.

The original claim: three versions of 10 minutes each take 30 minutes one by one and
10 minutes in parallel (efficiency 66.7%); two versions 20 → 10 (50%). Here one version
takes about 1 s on the mock server (1 s stands for 10 minutes), over real HTTP.

    .venv/bin/python benchmarks/seed_table.py [--repeats 3]
"""

from __future__ import annotations

from _common import run_on_mock

from arboris_nb import LLMConfig, sweep

TTFT_S, TOKENS_PER_S, TOKENS = 0.2, 100.0, 81  # 0.2 s + 80 gaps of 10 ms = 1.0 s
LATENCY_S = TTFT_S + (TOKENS - 1) / TOKENS_PER_S
SEED = {3: 200 / 3, 2: 50.0}  # the seed's efficiencies, percent


async def measure(base_url: str, repeats: int) -> None:
    llm = LLMConfig(base_url=base_url, model="mock-model")
    print(f"{'N':>2} {'serial s':>9} {'parallel s':>10} {'= minutes':>12} {'efficiency':>10} "
          f"{'seed':>6} {'wall/ideal':>10}")  # fmt: skip
    for n in (3, 2):
        result = await sweep(versions=n, concurrency=[n], repeats=repeats, llm=llm, progress=False)
        table = result.table().set_index("mode")
        serial, parallel = table.loc["serial"], table.loc["parallel"]
        minutes = f"{serial['elapsed_s'] * 10:.0f} → {parallel['elapsed_s'] * 10:.1f}"
        print(
            f"{n:>2} {serial['elapsed_s']:>9.3f} {parallel['elapsed_s']:>10.3f} {minutes:>12} "
            f"{parallel['efficiency']:>9.1f}% {SEED[n]:>5.1f}% {parallel['wall_over_ideal']:>10.3f}"
        )


def main() -> None:
    run_on_mock(
        measure,
        description=__doc__.splitlines()[0],
        repeats=3,
        ttft_s=TTFT_S,
        tokens_per_s=TOKENS_PER_S,
        tokens=TOKENS,
        what=" (1 s = 10 minutes); means",
    )


if __name__ == "__main__":
    main()
