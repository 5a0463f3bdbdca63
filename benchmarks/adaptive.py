"""Adaptive concurrency against fixed limits, side by side, on one mock server.

The mock admits at most ``--cap`` requests at once and answers 429 with Retry-After
above that (like a per-account concurrency cap). Each setting generates ``--versions``
versions in one run; fixed limits and ``AdaptiveLimit`` take turns, ``--rounds`` times,
and the medians are compared. Target: adaptive ≥ 90 % of the best fixed throughput, with
under 5 % of its requests answered 429.

    .venv/bin/python benchmarks/adaptive.py            # ~3 minutes
    .venv/bin/python benchmarks/adaptive.py --plot limit.png
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass

from arboris_nb import AdaptiveLimit, LLMConfig, RetryPolicy, WriterSettings, generate_versions
from arboris_nb.adaptive import plot_limit_history
from arboris_nb.limits import FixedLimit, Limiter
from arboris_nb.mockserver import MockServer


@dataclass
class Result:
    name: str
    throughput: float  # versions per second
    share_429: float
    ok: int
    requests: int


async def measure(name: str, limiter: Limiter, server: MockServer, n: int) -> Result:
    server.reset()
    llm = LLMConfig(base_url=server.base_url, model="mock-model", api_key="sk-bench-0000")
    run = await generate_versions(
        "Write the chapter.",
        settings=WriterSettings(max_parallel_requests=3),
        llm=llm,
        limiter=limiter,
        indices=range(1, n + 1),
        retry=RetryPolicy(attempts=10, base_delay_s=0.2, seed=1),
        raise_on_all_failed=False,
    )
    stats = server.stats(log=False)
    requests = stats["requests"]
    share = stats["by_status"].get("429", 0) / requests if requests else 0.0
    return Result(name, len(run.ok) / (run.elapsed_s or 1.0), share, len(run.ok), requests)


def limiters(fixed: list[int]) -> list[tuple[str, Limiter | None]]:
    return [(f"fixed {c}", FixedLimit(c)) for c in fixed] + [("auto", None)]


async def main(args: argparse.Namespace) -> int:
    server = MockServer(
        ttft_s=args.ttft,
        tokens_per_s=args.tokens_per_s,
        output_tokens=args.tokens,
        max_concurrent=args.cap,
        retry_after_s=args.retry_after,
        process=True,
    )
    results: dict[str, list[Result]] = {}
    last_auto: AdaptiveLimit | None = None
    with server:
        for _ in range(args.rounds):
            for name, limiter in limiters(args.fixed):
                if limiter is None:
                    limiter = last_auto = AdaptiveLimit(min=1, max=10, initial=2)
                result = await measure(name, limiter, server, args.versions)
                results.setdefault(name, []).append(result)
    report(results, args)
    if args.plot and last_auto is not None:
        plot_limit_history(last_auto.frame(), title="AdaptiveLimit, last round").savefig(args.plot)
        print(f"limit history plotted to {args.plot}")
    return 0


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    print(
        f"mock: cap {args.cap} requests at once (429 above, Retry-After {args.retry_after:g} s), "
        f"{args.versions} versions per run, {args.rounds} rounds, medians"
    )
    print(f"{'setting':<10} {'versions/s':>10} {'429 share':>10} {'ok':>5} {'requests':>9}")
    medians = {}
    for name, rs in results.items():
        tp = statistics.median(r.throughput for r in rs)
        share = statistics.median(r.share_429 for r in rs)
        medians[name] = (tp, share)
        ok, req = sum(r.ok for r in rs), sum(r.requests for r in rs)
        print(f"{name:<10} {tp:>10.2f} {share:>10.1%} {ok:>5} {req:>9}")
    best_name, (best_tp, _) = max(
        ((k, v) for k, v in medians.items() if k != "auto"), key=lambda kv: kv[1][0]
    )
    auto_tp, auto_share = medians["auto"]
    print(
        f"auto / best fixed ({best_name}) throughput: {auto_tp / best_tp:.2f} "
        f"(target >= 0.90); auto 429 share: {auto_share:.1%} (target < 5%)"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cap", type=int, default=6, help="mock max_concurrent (default 6)")
    p.add_argument("--versions", type=int, default=120, help="versions per run (default 120)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every setting (default 2)")
    p.add_argument("--fixed", type=int, nargs="+", default=[3, 6, 8])
    p.add_argument("--ttft", type=float, default=0.1, help="mock time to first token (s)")
    p.add_argument("--tokens-per-s", type=float, default=200.0)
    p.add_argument("--tokens", type=int, default=60, help="tokens per reply")
    p.add_argument("--retry-after", type=float, default=1.0, help="mock Retry-After (s)")
    p.add_argument("--plot", help="save the last adaptive run's limit history to this file")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
