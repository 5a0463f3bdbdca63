"""What streaming costs on the kernel's websocket, per character, in a real browser.

Starts JupyterLab (or Notebook 7) on 127.0.0.1 with headless Chromium, displays a
3-version VersionsWidget per language on the offline SimulatedLLM, presses Generate, and
counts every frame the page receives on the kernel websocket until the run ends; divides
by the characters that streamed. Also prints the first token's delay (kernel send time vs
the browser's Date.now() when it was shown). The browser test runs the same at one size.

    .venv/bin/python benchmarks/widget_wire.py --tokens 1500 --rate 15        # the issue's run
    .venv/bin/python benchmarks/widget_wire.py --tokens 3000 --rate 300 --langs zh
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the browser driver lives with the browser test

from _common import machine  # noqa: E402

from tests.browser.driver import (  # noqa: E402
    NOTEBOOK,
    NOTEBOOK_SETTINGS,
    Wire,
    browser_page,
    measure_run,
    run_all,
    wait_kernel_done,
    write_notebook,
)
from tests.browser.lab import jupyter_lab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1500, help="tokens per version")
    parser.add_argument("--rate", type=float, default=15.0, help="tokens/s per version")
    parser.add_argument("--langs", default="en,zh", help="comma-separated: en, zh")
    parser.add_argument("--front-end", choices=("lab", "notebook"), default="lab")
    args = parser.parse_args()
    runs = dict.fromkeys(args.langs.split(","), (args.tokens, args.rate))
    print(machine())
    print(f"{args.front_end}: 3 versions × {args.tokens} tokens at {args.rate} tokens/s")
    print(f"{'lang':<5}{'chars':>8}{'frames':>8}{'bytes':>10}{'B/char':>8}{'first token ms':>18}")
    with tempfile.TemporaryDirectory(prefix="arboris-wire-") as tmp:
        root, home = Path(tmp) / "root", Path(tmp) / "home"
        root.mkdir()
        write_notebook(root, runs)
        with (
            jupyter_lab(root, home, settings=NOTEBOOK_SETTINGS, front_end=args.front_end) as lab,
            browser_page(lab) as page,
        ):
            wire = Wire(page)
            page.goto(lab.notebook_url(NOTEBOOK))
            page.wait_for_selector(".jp-Notebook", timeout=30_000)
            run_all(page)
            wait_kernel_done(page)
            timeout_s = 3 * args.tokens / args.rate + 60
            for lang in runs:
                m = measure_run(page, wire, f".arboris-{lang}", timeout_s=timeout_s)
                lags = ", ".join(str(int(x)) for x in m["first_token_lag_ms"])
                print(
                    f"{lang:<5}{m['characters']:>8}{m['frames']:>8}{m['bytes']:>10}"
                    f"{m['bytes_per_char']:>8.2f}{lags:>18}"
                )


if __name__ == "__main__":
    main()
