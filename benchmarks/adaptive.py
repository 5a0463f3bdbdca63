"""Adaptive concurrency against every fixed limit, on the four ways providers limit load.

For each behaviour of the mock server (see docs/mockserver.md) the same batch of versions
runs under every fixed limit C = 1…10 and under ``auto`` (``max_parallel_requests="auto"``),
repeat after repeat, interleaved so drift on a shared machine spreads over all settings.
Before each run the mock is reset (budgets full, window closed). ``auto`` is measured
twice a repeat: *cold* — a new API key, so nothing is remembered of the endpoint (the
first run an editor makes) — and then *warm* — the cold run's key again, so it starts
from what that one run learned (``arboris_nb.limit_memory``; the runs after the first).
Every other run uses a new key too, so no run inherits a budget another one spent.
Throughput is versions per second; the 429 share is the server's own count of
429 answers over all requests it received.

1. cap — at most 6 requests in flight; the excess gets 429 (Retry-After 0.06 s)
2. window — the same cap, but a 429 opens a 0.12 s window refusing everyone
3. budgets — OpenAI-style token and request buckets with x-ratelimit-* headers
4. slower — no 429: capacity 6 with a queue behind it, latency +50 % at full load
3b. no headers — the budgets of 3 without their headers (an extra row)

Targets: on each, auto ≥ 90 % of the best fixed throughput with < 5 % 429s; on 3, < 1 %
(judged on the cold runs; the warm ones are printed beside them).

    .venv/bin/python benchmarks/adaptive.py                 # ~7 minutes
    .venv/bin/python benchmarks/adaptive.py --repeats 5 --only 2 --plot limits.png
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import machine

from arboris_nb import LLMConfig, Recorder, RetryPolicy, WriterSettings, generate_versions
from arboris_nb.limits import FixedLimit
from arboris_nb.mockserver import MockServer

# ~0.12 s a version: 0.06 s to the first token, 20 tokens at 320 tokens/s, each ±50 %
# (uniform): real latencies vary, and identical ones would line fixed limits up in waves.
LATENCY: dict[str, Any] = {"ttft_s": 0.06, "tokens_per_s": 320.0, "output_tokens": 20}
LATENCY["jitter"] = 0.5
MAX_TOKENS = 20  # sent with every request, so a budget charge is known up front
# Waits in proportion to a version's time, as a 1 s Retry-After or a 30 s window would be
# next to chapters that take 10–30 s to write.
# 30 tokens a request (10 of prompt, max_tokens 20): 1500 tokens/s are 50 versions/s, what
# ~6 requests in flight deliver; a bucket refills in 0.2 s, so a burst passes ~10.
BUDGETS: dict[str, Any] = {"token_budget": 300, "request_budget": 40, "budget_period_s": 0.2}
BEHAVIOURS: dict[str, dict[str, Any]] = {
    "1 cap": {"max_concurrent": 6, "retry_after_s": 0.06},
    "2 window": {"max_concurrent": 6, "window_s": 0.12},
    "3 budgets": BUDGETS,
    "4 slower": {"capacity": 6, "slowdown": 0.5},
    "3b no headers": {**BUDGETS, "ratelimit_headers": False},
}
SETTINGS: list[int | str] = [*range(1, 11), "auto", "warm"]  # warm: auto on the cold key


@dataclass
class Measured:
    throughput: float  # ok versions per second
    share_429: float  # 429 answers / requests, as the server counted them
    ok: int


async def measure(server: MockServer, setting: int | str, key: str, args: Any) -> Measured:
    server.reset()
    # auto: the engine's own limiter, remembered per endpoint (base URL, model, key).
    limiter = FixedLimit(setting) if isinstance(setting, int) else None
    recorder = args.recorder if limiter is None else None
    label = f"{args.current} {'warm' if setting == 'warm' else 'cold'}"
    run = await generate_versions(
        "Write the chapter about the lighthouse keeper and the letter.",
        settings=WriterSettings(version_count=10, max_parallel_requests="auto"),
        llm=LLMConfig(base_url=server.base_url, api_key=key, max_tokens=MAX_TOKENS),
        limiter=limiter,
        indices=range(1, args.versions + 1),
        retry=RetryPolicy(attempts=12, base_delay_s=0.05, max_delay_s=2.0, seed=1),
        on_event=recorder.label(label) if recorder is not None else None,
        raise_on_all_failed=False,
        store=False,
    )
    stats = server.stats(log=False)
    requests = stats["requests"] or 1
    share = stats["by_status"].get("429", 0) / requests
    return Measured(len(run.ok) / (run.elapsed_s or 1.0), share, len(run.ok))


async def behaviour(name: str, options: dict[str, Any], args: Any) -> dict[str, list[Measured]]:
    results: dict[str, list[Measured]] = {str(s): [] for s in SETTINGS}
    keys = (f"sk-bench-{name[0]}-{i:05d}-padding" for i in itertools.count())
    cold_key = ""
    args.current = name
    server = MockServer(**LATENCY, **options, process=True)
    with server:
        for _repeat in range(args.repeats):
            for setting in SETTINGS:
                key = cold_key if setting == "warm" else next(keys)
                cold_key = key if setting == "auto" else cold_key
                measured = await measure(server, setting, key, args)
                results[str(setting)].append(measured)
    return results


def summary(name: str, results: dict[str, list[Measured]]) -> dict[str, Any]:
    med = {
        s: (statistics.median(m.throughput for m in ms), statistics.median(m.share_429 for m in ms))
        for s, ms in results.items()
    }
    fixed = {s: v for s, v in med.items() if s not in ("auto", "warm")}
    best = max(fixed, key=lambda s: fixed[s][0])
    auto_tp, auto_share = med["auto"]
    warm_tp, warm_share = med["warm"]
    return {
        "behaviour": name,
        "best": best,
        "best_tp": fixed[best][0],
        "best_share": fixed[best][1],
        "auto_tp": auto_tp,
        "ratio": auto_tp / fixed[best][0],
        "auto_share": auto_share,
        "warm_ratio": warm_tp / fixed[best][0],
        "warm_share": warm_share,
    }


def report(rows: list[dict[str, Any]], args: Any) -> None:
    print(
        f"{args.versions} versions a run, fixed C = 1…10 and auto (cold: a new key; warm: "
        f"the cold run's key again), {args.repeats} repeats, medians"
    )
    head = (
        f"{'behaviour':<13} {'best fixed C':>12} {'versions/s':>10} {'its 429s':>8} "
        f"{'cold v/s':>8} {'cold/best':>9} {'cold 429s':>9} {'warm/best':>9} {'warm 429s':>9}"
        "  target (cold)"
    )
    print(head)
    for r in rows:
        limit_429 = 0.01 if r["behaviour"] == "3 budgets" else 0.05
        ok = r["ratio"] >= 0.90 and r["auto_share"] < limit_429
        print(
            f"{r['behaviour']:<13} {r['best']:>12} {r['best_tp']:>10.2f} {r['best_share']:>8.1%} "
            f"{r['auto_tp']:>8.2f} {r['ratio']:>9.2f} {r['auto_share']:>9.1%} "
            f"{r['warm_ratio']:>9.2f} {r['warm_share']:>9.1%}  "
            f"{'met' if ok else 'MISSED'} (≥ 0.90, < {limit_429:.0%})"
        )


def detail(name: str, results: dict[str, list[Measured]]) -> None:
    cells = "  ".join(
        f"{s}:{statistics.median(m.throughput for m in ms):.1f}/"
        f"{statistics.median(m.share_429 for m in ms):.0%}"
        for s, ms in results.items()
    )
    print(f"  {name}: {cells}", file=sys.stderr)


async def main(args: argparse.Namespace) -> int:
    print(machine())
    args.recorder = Recorder() if args.plot else None
    rows = []
    for name, options in BEHAVIOURS.items():
        if args.only and not name.startswith(args.only):
            continue
        results = await behaviour(name, options, args)
        detail(name, results)
        rows.append(summary(name, results))
    report(rows, args)
    if args.recorder is not None:
        plot_traces(args.recorder, Path(args.plot))
    return 0


def plot_traces(recorder: Recorder, path: Path) -> None:
    """The last cold and warm auto runs' limit traces, one file each per behaviour:
    limits-1-cap-cold.png, limits-1-cap-warm.png, …"""
    from arboris_nb.analysis.plots import plot_limit

    frame = recorder.limits_frame()
    for name, rows in frame.groupby("label", sort=False):
        out = path.with_name(f"{path.stem}-{str(name).replace(' ', '-')}{path.suffix}")
        plot_limit(rows).savefig(out, dpi=110)
        print(f"limit trace of the last auto run, {name}: {out}")  # cold, then warm


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--versions", type=int, default=60, help="versions per run (default 60)")
    p.add_argument("--repeats", type=int, default=3, help="runs of every setting (default 3)")
    p.add_argument("--only", help="run only the behaviours whose name starts with this")
    p.add_argument("--plot", help="save the last auto run's limit trace, per behaviour (PNG)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
