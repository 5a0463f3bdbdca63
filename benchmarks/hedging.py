"""Stragglers: plain runs, keep-the-first-N (``extra_versions=1``) and hedged requests,
side by side on the same slow requests.

N = 3 versions a run, C = 4 (a free slot for the extra or the hedge). The mock makes 10 %
of requests 5× slower (first token and every token after it). Each repeat runs every mode
with the same run id, and the mock draws its stragglers by request (run id, version,
attempt, hedge), so the modes meet exactly the same slow requests: a paired comparison.
Then the same modes on a mock without stragglers: what hedging costs when nothing is slow.

Reported per mode: mean, median and p90 wall time (and their ratios to plain), extra
output tokens (what the server streamed, over what plain streamed), and the length bias
(mean length of the texts kept, over plain's). Targets (issue 14): with extra_versions=1
or hedging, mean ≤ 0.65× and p90 ≤ 0.5× plain, extra output tokens ≤ 35 %; without
stragglers, hedging adds < 5 % tokens and no wall time.

    .venv/bin/python benchmarks/hedging.py               # ~4 minutes (50 repeats)
    .venv/bin/python benchmarks/hedging.py --repeats 100
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

from _common import machine

from arboris_nb import LLMConfig, RetryPolicy, Run, WriterSettings, generate_versions
from arboris_nb.hedging import quantile
from arboris_nb.mockserver import MockServer

N, C = 3, 4
MOCK: dict[str, Any] = {"ttft_s": 0.1, "tokens_per_s": 40.0, "output_tokens": 20, "jitter": 0.1}
# (name, extra_versions, hedge_after_s): the hedge fires at 2.5× the usual first token.
MODES: list[tuple[str, int, float | None]] = [
    ("plain", 0, None),
    ("extra_versions=1", 1, None),
    ("hedge_after_s=0.25", 0, 0.25),
]


@dataclass
class Tally:
    """One mode's runs on one server."""

    walls: list[float] = field(default_factory=list)
    kept_chars: list[int] = field(default_factory=list)
    kept_tokens: int = 0
    wasted_tokens: int = 0  # the engine's count (cancelled extras, losing hedges)
    hedges: int = 0
    failed: int = 0

    def add(self, run: Run) -> None:
        self.walls.append(run.elapsed_s or 0.0)
        self.kept_chars += [len(v.content or "") for v in run.kept]
        pool = run.pool_summary()
        self.kept_tokens += pool["kept_tokens"]
        self.wasted_tokens += pool["wasted_tokens"]
        self.hedges += pool["hedges"]
        self.failed += len(run.kept) < N


async def one_run(url: str, repeat: int, extra: int, hedge_after_s: float | None) -> Run:
    return await generate_versions(
        "Write the chapter.",
        settings=WriterSettings(version_count=N, max_parallel_requests=C, extra_versions=extra),
        llm=LLMConfig(base_url=url, model="mock-model"),
        retry=RetryPolicy(hedge_after_s=hedge_after_s),
        run_id=f"repeat-{repeat}",  # the same id in every mode: the same stragglers
        store=False,
        raise_on_all_failed=False,
    )


async def scenario(straggler_rate: float, repeats: int) -> dict[str, tuple[Tally, int]]:
    """Every mode on its own mock process (same config and seed), interleaved repeat by
    repeat so drift on the machine spreads over all of them. Returns (tally, tokens the
    server streamed) per mode."""
    servers = {
        name: MockServer(**MOCK, straggler_rate=straggler_rate, straggler_factor=5.0, process=True)
        for name, _, _ in MODES
    }
    tallies = {name: Tally() for name, _, _ in MODES}
    for server in servers.values():
        server.start()
    try:
        for name, extra, hedge in MODES:  # warm-up: imports, connections
            await one_run(servers[name].base_url, -1, extra, hedge)
            servers[name].reset()
        for repeat in range(repeats):
            for name, extra, hedge in MODES:
                tallies[name].add(await one_run(servers[name].base_url, repeat, extra, hedge))
        sent = {name: servers[name].stats(log=False)["completion_tokens"] for name in servers}
    finally:
        for server in servers.values():
            server.stop()
    return {name: (tallies[name], sent[name]) for name in tallies}


def table(title: str, results: dict[str, tuple[Tally, int]]) -> dict[str, dict[str, float]]:
    plain, plain_sent = results["plain"]
    base = {"mean": statistics.fmean(plain.walls), "p90": quantile(plain.walls, 0.9)}
    base_chars = statistics.fmean(plain.kept_chars)
    print(f"\n{title}")
    print(
        f"{'mode':<20} {'mean s':>7} {'median':>7} {'p90 s':>7} {'mean×':>6} {'p90×':>6} "
        f"{'extra tok':>9} {'wasted':>7} {'hedges':>6} {'length':>7} {'<N kept':>7}"
    )
    ratios = {}
    for name, (tally, sent) in results.items():
        mean, p90 = statistics.fmean(tally.walls), quantile(tally.walls, 0.9)
        ratios[name] = {
            "mean": mean / base["mean"],
            "p90": p90 / base["p90"],
            "extra_tokens": sent / plain_sent - 1,
        }
        print(
            f"{name:<20} {mean:>7.3f} {statistics.median(tally.walls):>7.3f} {p90:>7.3f} "
            f"{ratios[name]['mean']:>6.2f} {ratios[name]['p90']:>6.2f} "
            f"{ratios[name]['extra_tokens']:>9.1%} "
            f"{tally.wasted_tokens / max(1, tally.kept_tokens):>7.1%} {tally.hedges:>6} "
            f"{statistics.fmean(tally.kept_chars) / base_chars:>7.3f} {tally.failed:>7}"
        )
    return ratios


def verdict(tail: dict[str, dict[str, float]], calm: dict[str, dict[str, float]]) -> None:
    print("\ntargets:")
    for name in ("extra_versions=1", "hedge_after_s=0.25"):
        r = tail[name]
        print(
            f"  {name:<20} mean {r['mean']:.2f}× (≤ 0.65) · p90 {r['p90']:.2f}× (≤ 0.5) · "
            f"extra tokens {r['extra_tokens']:.1%} (≤ 35 %)"
        )
    h = calm["hedge_after_s=0.25"]
    print(
        f"  without stragglers, hedging: extra tokens {h['extra_tokens']:.1%} (< 5 %) · "
        f"mean wall {h['mean']:.3f}× plain (no wall time added: ≈ 1)"
    )


async def main(args: argparse.Namespace) -> int:
    latency = MOCK["ttft_s"] + (MOCK["output_tokens"] - 1) / MOCK["tokens_per_s"]
    print(machine())
    print(
        f"mock (own processes): ttft {MOCK['ttft_s']} s, {MOCK['output_tokens']} tokens at "
        f"{MOCK['tokens_per_s']:g}/s, jitter ±{MOCK['jitter']:.0%} ≈ {latency:.2f} s a version; "
        f"N = {N}, C = {C}, {args.repeats} repeats"
    )
    print(
        "columns: extra tok = tokens the server streamed / plain's − 1; wasted = the engine's "
        "count of tokens not kept / kept; length = mean chars kept / plain's; "
        "<N kept = runs that kept fewer than N"
    )
    tail = table(
        "10 % of requests 5× slower (about one run in four meets a straggler)",
        await scenario(0.10, args.repeats),
    )
    calm = table("no stragglers", await scenario(0.0, args.repeats))
    verdict(tail, calm)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=50, help="runs of every mode (default 50)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
