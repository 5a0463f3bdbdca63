"""(f) Fan-out by n: one request for N versions against N requests, side by side.

A 6,000-token chapter prompt, N = 3, against the mock with prefill modelled: the server
reads prompts one after another at PREFILL tokens a second, so N separate requests read
the same prompt N times (and pay for it N times), one request with n = N reads it once.
Each repeat runs both modes back to back on the same server; the table shows medians.
Billed tokens come from the runs' own usage, checked against the mock's /stats.

    .venv/bin/python benchmarks/fanout.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from typing import Any

from _common import machine

from arboris_nb import LLMConfig, WriterSettings, chapter_messages, generate_versions
from arboris_nb.backends.base import Message
from arboris_nb.mockserver import MockServer
from arboris_nb.results import Run

PROMPT_TOKENS, N = 6000, 3
PREFILL = 10_000.0  # prompt tokens read per second, server-wide
TTFT_S, TOKENS_PER_S, TOKENS = 0.2, 50.0, 150
# Example prices (USD per million tokens) to show the cost column; not anyone's price list.
PRICE_IN, PRICE_OUT = 2.50, 10.00
MODES = ("requests", "n")


def chapter_prompt(tokens: int) -> list[Message]:
    """Arboris-style chapter messages padded to exactly ``tokens`` words (the mock's count)."""
    filler = "the old lantern swung in the rain and the bells kept time".split()
    size = tokens
    for _ in range(5):  # the section labels add words too: converge on the exact size
        tail = " ".join(filler[i % len(filler)] for i in range(size))
        messages = chapter_messages(
            chapter=12,
            goal="Mara opens the letter on the harbor wall and decides not to tell her sister.",
            previous_summary="The storm kept the ships in port; the archive burned.",
            previous_tail=tail,
        )
        have = sum(len(m["content"].split()) for m in messages)
        if have == tokens:
            return messages
        size += tokens - have
    raise RuntimeError(f"could not build a {tokens}-token prompt")


def stats(base_url: str) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(root + "/stats?log=0", timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def reset(base_url: str) -> None:
    req = urllib.request.Request(base_url.removesuffix("/v1") + "/stats/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


async def one_run(base_url: str, messages: list[Message], fanout: str) -> dict[str, Any]:
    llm = LLMConfig(base_url=base_url, model="mock-model", price_in=PRICE_IN, price_out=PRICE_OUT)
    reset(base_url)
    started = time.perf_counter()
    run: Run = await generate_versions(
        messages,
        settings=WriterSettings(N, max_parallel_requests=N, fanout=fanout),  # type: ignore[arg-type]
        llm=llm,
        store=False,
    )
    wall = time.perf_counter() - started
    served = stats(base_url)
    ttfts = [v.ttft_s for v in run.versions if v.ttft_s is not None]
    return {
        "requests": served["requests"],
        "input": run.input_tokens,
        "output": run.output_tokens,
        "matches": (run.input_tokens, run.output_tokens)
        == (served["prompt_tokens"], served["completion_tokens"]),
        "wall": wall,
        "ttft_mean": statistics.fmean(ttfts),
        "ttft_max": max(ttfts),
        "cost": run.cost,
        "ok": len(run.ok),
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


async def measure(base_url: str, repeats: int) -> None:
    messages = chapter_prompt(PROMPT_TOKENS)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    # Warm-up, not counted: the first run of a process pays for imports and connecting.
    await generate_versions("warm up", llm=LLMConfig(base_url=base_url), store=False)
    for _ in range(repeats):
        for mode in MODES:  # side by side in every repeat
            results[mode].append(await one_run(base_url, messages, mode))
    print(
        f"{'fanout':<9} {'requests':>8} {'input billed':>12} {'output billed':>13} "
        f"{'= /stats':>8} {'wall s':>7} {'ttft mean s':>11} {'ttft max s':>10} {'cost $':>8}"
    )
    for mode, rows in results.items():
        first = rows[0]
        same = all(r["input"] == first["input"] and r["output"] == first["output"] for r in rows)
        print(
            f"{mode:<9} {first['requests']:>8} {first['input']:>12,} {first['output']:>13,} "
            f"{'yes' if all(r['matches'] for r in rows) and same else 'NO':>8} "
            f"{median(rows, 'wall'):>7.3f} {median(rows, 'ttft_mean'):>11.3f} "
            f"{median(rows, 'ttft_max'):>10.3f} {first['cost']:>8.4f}"
        )
    req, fan = results["requests"][0], results["n"][0]
    ratio = fan["input"] / req["input"]
    print(
        f"n / requests: billed input {ratio:.4f} (exactly 1/{N}: "
        f"{'yes' if fan['input'] * N == req['input'] else 'NO'}), "
        f"wall {median(results['n'], 'wall') / median(results['requests'], 'wall'):.3f}, "
        f"ttft max {median(results['n'], 'ttft_max') / median(results['requests'], 'ttft_max'):.3f}"
        f", cost {fan['cost'] / req['cost']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    print(
        f"mock (own process): prompt {PROMPT_TOKENS:,} tokens read at {PREFILL:,.0f} tokens/s "
        f"(server-wide: {PROMPT_TOKENS / PREFILL:.2f} s a prompt), then ttft {TTFT_S} s and "
        f"{TOKENS} tokens at {TOKENS_PER_S:g}/s; N = {N}; example prices ${PRICE_IN:.2f} in, "
        f"${PRICE_OUT:.2f} out per million; medians over {args.repeats} repeats"
    )
    server = MockServer(
        ttft_s=TTFT_S,
        tokens_per_s=TOKENS_PER_S,
        output_tokens=TOKENS,
        prefill=PREFILL,
        process=True,
    )
    with server as base_url:
        asyncio.run(measure(base_url, args.repeats))


if __name__ == "__main__":
    main()
