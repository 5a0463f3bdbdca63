"""Driving the live widget in headless Chromium: shared by the browser test and
``benchmarks/widget_wire.py``.

A temporary notebook displays one widget per language (``SimulatedLLM(lang=...)``), one
with a stuck version and an extra one (the live pool), a stored run reopened with
``VersionsWidget.load`` (the editor's desk), and a probe whose model replies with an
HTML/JS payload (awaited in its cell). ``Wire``
counts the bytes of every frame the page receives on kernel websockets, so
:func:`measure_run` can divide what pressing Generate cost on the wire by the
characters that streamed, and read the first token's delay that ``panel.js`` records
(kernel send time vs ``Date.now()`` when it was shown, same machine clock).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
from playwright.sync_api import Page, WebSocket, sync_playwright

from .lab import Lab

__all__ = [
    "CHROMIUM",
    "NOTEBOOK",
    "NOTEBOOK_SETTINGS",
    "PAYLOAD",
    "Wire",
    "browser_page",
    "measure_run",
    "run_all",
    "state",
    "wait_kernel_done",
    "write_notebook",
]

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOK = "live_widget.ipynb"
# Windowed notebooks detach off-screen cells; the test reads every cell's output.
NOTEBOOK_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"}}
PAYLOAD = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
PROMPTS = {
    "en": "Write chapter 3: the keeper finds a letter.",
    "zh": "写第三章：灯塔看守人发现了一封信。",
}
SETUP_CELL = """
from IPython.display import display
from arboris_nb import SimulatedLLM, WriterSettings
from arboris_nb.widgets import VersionsWidget

def live_widget(lang, tokens, rate, prompt):
    llm = SimulatedLLM(lang=lang, ttft_s=0.3, tokens_per_s=rate, output_tokens=tokens)
    settings = WriterSettings(version_count=3, max_parallel_requests=3)
    widget = VersionsWidget(llm=llm, settings=settings, prompt=prompt)
    widget.root.add_class(f"arboris-{lang}")
    return widget
"""
WIDGET_CELL = "{lang} = live_widget({lang!r}, {tokens}, {rate}, {prompt!r})\ndisplay({lang})"
# The live pool: 3 versions kept of 3 + 1, version 2 stuck (its first token at 3 s, done
# after ~9 s); the others take ~1.2 s. The test presses Generate, then +1.
POOL_CELL = """
stuck = SimulatedLLM(ttft_s=0.2, tokens_per_s=40.0, output_tokens=40, stragglers={2},
                     straggler_factor=15.0)
pool = VersionsWidget(llm=stuck, prompt="Write chapter 4.",
                      settings=WriterSettings(version_count=3, max_parallel_requests=5,
                                              extra_versions=1))
pool.root.add_class("arboris-pool")
display(pool)
"""
# The editor's desk: a Chinese run generated, selected, edited, retried with scene notes
# and evaluated, then reopened from the store with VersionsWidget.load (issue #13).
DESK_CELL = """
from arboris_nb import simulated_judge
writer = simulated_judge(lang="zh", ttft_s=0.01, tokens_per_s=2000, output_tokens=60)
first = VersionsWidget(llm=writer, settings=WriterSettings(version_count=3))
run = await first.generate("写第五章：姐妹俩一起读信。")
first.select(2)
first.edit(2, "「你先读，」姐姐说。\\n\\n妹妹把信举到灯下。")
first.set_notes(2, "姐姐早就读过这封信。")
await first.retry(2, "结尾停在一个问题上。")
await first.evaluate()
desk = VersionsWidget.load(run.run_id, llm=writer)
desk.root.add_class("arboris-desk")
display(desk)
"""
# A one-version widget whose model replies with PAYLOAD, awaited in its cell.
PROBE_CELL = f"""
probe = VersionsWidget(
    llm=SimulatedLLM(reply={PAYLOAD!r}, ttft_s=0.01, tokens_per_s=500),
    settings=WriterSettings(version_count=1),
)
probe.root.add_class("arboris-probe")
display(probe)
await probe.generate("anything")
"""

# The state of one widget, read in the page.
STATE_JS = """(selector) => {
  const root = document.querySelector(selector);
  if (!root) return null;
  const panels = [...root.querySelectorAll('.arboris-panel')];
  const body = (p) => p.querySelector('.arboris-panel-text');
  return {
    statuses: panels.map(p => p.querySelector('.arboris-status')?.textContent.trim() ?? ''),
    lengths: panels.map(p => body(p)?.textContent.length ?? 0),
    lags: panels.map(p => Number(body(p)?.dataset.firstTokenLagMs ?? NaN)),
    progress: root.querySelector('.arboris-progress')?.textContent ?? '',
    outcome: root.querySelector('.arboris-progress')?.dataset.outcome ?? '',
  };
}"""
KERNEL_IDLE_JS = """() => {
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = nb && nb.sessionContext && nb.sessionContext.session
    && nb.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
# Not awaited in the page: the command's promise resolves only when every cell has run.
RUN_ALL_JS = "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }"
FIRST_PROMPT_JS = """() => {
  const prompt = document.querySelector('.jp-CodeCell .jp-InputPrompt');
  return prompt ? prompt.textContent.trim() : '';
}"""


def write_notebook(root: Path, runs: dict[str, tuple[int, float]]) -> None:
    """The notebook: setup, one widget per ``lang: (tokens, tokens_per_s)``, the probe."""
    cells = [SETUP_CELL.strip()]
    for lang, (tokens, rate) in runs.items():
        cells.append(WIDGET_CELL.format(lang=lang, tokens=tokens, rate=rate, prompt=PROMPTS[lang]))
    cells.append(POOL_CELL.strip())
    cells.append(DESK_CELL.strip())
    cells.append(PROBE_CELL.strip())
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(book, root / NOTEBOOK)


class Wire:
    """Sizes of the frames the page receives on kernel websockets, in arrival order."""

    def __init__(self, page: Page) -> None:
        self.frames: list[int] = []
        self.page = page
        page.on("websocket", self._watch)

    def _watch(self, socket: WebSocket) -> None:
        if "/api/kernels/" in socket.url:
            socket.on("framereceived", self._count)

    def _count(self, payload: str | bytes) -> None:
        self.frames.append(len(payload.encode() if isinstance(payload, str) else payload))

    def mark(self) -> int:
        """The number of frames received so far (after delivering pending events)."""
        self.page.evaluate("0")
        return len(self.frames)


@contextmanager
def browser_page(lab: Lab) -> Iterator[Page]:
    """A fresh Chromium page (1400×1000); the browser closes on exit."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def run_all(page: Page) -> None:
    """Run all once the kernel is ready; trigger again if the first cell did not start."""
    for _ in range(3):
        page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)
        page.evaluate(RUN_ALL_JS)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if page.evaluate(FIRST_PROMPT_JS) not in {"", "[ ]:"}:
                return
            time.sleep(0.1)
    raise AssertionError("run-all did not start the first cell after 3 tries")


def wait_kernel_done(page: Page) -> None:
    """All cells ran: the probe widget (last cell) is done and the kernel is idle."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.arboris-probe .arboris-status')]"
        ".some(e => e.textContent.trim() === 'done')",
        timeout=60_000,
    )
    page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)


def state(page: Page, selector: str) -> Any:
    return page.evaluate(STATE_JS, selector)


def measure_run(
    page: Page,
    wire: Wire,
    selector: str,
    *,
    while_running: Callable[[], None] | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Press Generate in ``selector`` and wait until every panel is done.

    ``while_running`` is called once, as soon as a version runs. Returns the wire cost
    (``bytes_per_char``), first-token delays, and ``samples``: the total text length
    seen at each poll while some version was running.
    """
    widget = page.locator(selector)
    widget.scroll_into_view_if_needed()
    start = wire.mark()
    widget.get_by_role("button", name="Generate", exact=True).click()
    started = time.monotonic()
    samples: list[int] = []
    while time.monotonic() - started < timeout_s:
        now = state(page, selector)
        if "running" in now["statuses"]:
            samples.append(sum(now["lengths"]))
            if while_running is not None and len(samples) == 1:
                while_running()
        elif samples and set(now["statuses"]) == {"done"}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{selector} did not finish: {state(page, selector)}")
    time.sleep(0.5)  # the last frames of the run
    frames = wire.frames[start : wire.mark()]
    final = state(page, selector)
    chars = sum(final["lengths"])
    return {
        "characters": chars,
        "frames": len(frames),
        "bytes": sum(frames),
        "bytes_per_char": round(sum(frames) / chars, 2),
        "first_token_lag_ms": final["lags"],
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
        "final": final,
    }
