"""Fault injection: runs against a mock server where ~20 % of requests fail transiently.

The faults are a mix, each ~7.2 % of requests: 429 with Retry-After (scripted by request
number), 500 (``error_rate``) and streams cut mid-way (``disconnect_rate``). For every
retry policy the script reports versions that succeeded, attempts per version, whether any
retry came before its Retry-After (read from the *server's* log: arrival of the retry minus
the end of the 429), and whether anything was lost — every version ok or failed with its
error, every ok text exactly what a fault-free server with the same seed returns.

    .venv/bin/python benchmarks/reliability.py          # ~2 minutes
    .venv/bin/python benchmarks/reliability.py --runs 50 --fault-rate 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
from collections import defaultdict
from typing import Any

from arboris_nb import LLMConfig, RetryPolicy, Run, WriterSettings, generate_versions
from arboris_nb.mockserver import MockServer

FAST: dict[str, Any] = {"ttft_s": 0.05, "tokens_per_s": 400.0, "output_tokens": 40}


def scripted_429s(rate: float, requests: int, seed: int) -> dict[int, int]:
    rng = random.Random(seed)
    return {n: 429 for n in range(1, requests + 1) if rng.random() < rate}


async def runs(url: str, args: argparse.Namespace, policy: RetryPolicy) -> list[Run]:
    settings = WriterSettings(version_count=args.versions, max_parallel_requests=args.parallel)
    done = []
    for i in range(args.runs):
        done.append(
            await generate_versions(
                "Write the chapter.",
                settings=settings,
                llm=LLMConfig(base_url=url, model="mock-model"),
                retry=policy,
                run_id=f"run{i:03d}",
                raise_on_all_failed=False,
            )
        )
    return done


def early_retries(log: list[dict[str, Any]], retry_after_s: float) -> tuple[int, int]:
    """(429s followed by a retry, retries that came before Retry-After), from the server log."""
    by_version: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in log:
        by_version[(entry["run"], entry["version"])].append(entry)
    followed = early = 0
    for entries in by_version.values():
        entries.sort(key=lambda e: int(e["attempt"]))
        for before, after in itertools.pairwise(entries):
            if before["status"] == 429:
                followed += 1
                early += after["arrival_s"] - before["end_s"] < retry_after_s
    return followed, early


async def measure(args: argparse.Namespace, attempts: int) -> dict[str, Any]:
    rate = 1 - (1 - args.fault_rate) ** (1 / 3)  # three independent kinds of fault
    total = args.runs * args.versions * (attempts + 1)
    faulty = MockServer(
        seed=args.seed,
        error_rate=rate,
        disconnect_rate=rate,
        fail_requests=scripted_429s(rate, total, args.seed),
        retry_after_s=args.retry_after,
        **FAST,
    )
    policy = RetryPolicy(attempts=attempts, seed=args.seed)
    with MockServer(seed=args.seed, **FAST) as clean_url:
        reference = await runs(clean_url, args, policy)
    with faulty as url:
        result = await runs(url, args, policy)
        stats = faulty.stats()
    versions = [v for run in result for v in run.versions]
    expected = [v.content for run in reference for v in run.versions]
    ok = [v for v in versions if v.status == "ok"]
    accounted = all(v.status in ("ok", "failed") and (v.ok or v.error) for v in versions)
    intact = all(v.content == ref for v, ref in zip(versions, expected, strict=True) if v.ok)
    faults = sum(n for s, n in stats["by_status"].items() if s != "200") + stats["disconnects"]
    followed, early = early_retries(stats["log"], args.retry_after)
    return {
        "attempts": attempts,
        "versions": len(versions),
        "ok": len(ok),
        "requests": stats["requests"],
        "fault_share": faults / stats["requests"],
        "mean_attempts": sum(v.attempt_count for v in versions) / len(versions),
        "retried": sum(v.attempt_count > 1 for v in versions),
        "429_retries": followed,
        "early": early,
        "lost": not (
            accounted and intact and stats["requests"] == sum(v.attempt_count for v in versions)
        ),
    }


async def main(args: argparse.Namespace) -> int:
    print(
        f"{args.runs} runs x {args.versions} versions, C={args.parallel}, target fault rate "
        f"{args.fault_rate:.0%} (429 with Retry-After {args.retry_after:g} s, 500, cut streams)"
    )
    print(
        f"{'attempts':>8} {'ok':>9} {'success':>8} {'faults':>7} {'att/ver':>8} "
        f"{'retried':>8} {'429→retry':>9} {'early':>6} {'lost':>5}"
    )
    failed_target = False
    for attempts in args.attempts:
        r = await measure(args, attempts)
        share = r["ok"] / r["versions"]
        print(
            f"{attempts:>8} {r['ok']:>4}/{r['versions']:<4} {share:>8.1%} {r['fault_share']:>7.1%} "
            f"{r['mean_attempts']:>8.2f} {r['retried']:>8} {r['429_retries']:>9} "
            f"{r['early']:>6} {'yes' if r['lost'] else 'no':>5}"
        )
        failed_target |= r["early"] > 0 or r["lost"]
    return 1 if failed_target else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--versions", type=int, default=10)
    p.add_argument("--parallel", type=int, default=4, help="max_parallel_requests")
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--retry-after", type=float, default=0.3, help="mock Retry-After (s)")
    p.add_argument("--attempts", type=int, nargs="+", default=[3, 5], help="policies to compare")
    p.add_argument("--seed", type=int, default=11)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
