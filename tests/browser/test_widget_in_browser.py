"""The widget in a real browser: JupyterLab + Debian's headless Chromium, driven by Playwright.

Opens a copy of ``notebooks/01_quickstart.ipynb`` (plus one appended cell whose model
replies with an HTML/JS payload), runs all cells from the Run menu, and checks what a
user sees: the panels render, text streams in *while* versions are still running, every
panel ends ``done``, the Stop button cancels a second run within a second, model output
is shown as text and never executed, and the page logs no errors. A screenshot of the
widget is saved to ``artifacts/widget.png``.

It relies on the quickstart's first ``VersionsWidget`` being a 3-version run that streams
for a few seconds (slow enough to watch) on a model that stays idle after it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from playwright.sync_api import Locator, Page, sync_playwright

from .lab import Lab, jupyter_lab

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    # Skipped on a developer's machine without chromium; never in CI, which installs it
    # (.ci/run) — there a missing browser must fail, not quietly skip the test.
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="chromium is not on PATH (apt-get install chromium)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAYLOAD = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
# Appended to the notebook copy: a one-version widget whose model replies with PAYLOAD.
PROBE_CELL = f"""
from IPython.display import display
from arboris_nb import SimulatedLLM, WriterSettings
from arboris_nb.widgets import VersionsWidget

probe = VersionsWidget(
    llm=SimulatedLLM(reply={PAYLOAD!r}, ttft_s=0.01, tokens_per_s=500),
    settings=WriterSettings(version_count=1),
)
probe.root.add_class("arboris-probe")
display(probe)
await probe.generate("anything")
"""

# The state of one widget (by CSS selector and position), read in the page.
STATE_JS = """([selector, nth]) => {
  const root = document.querySelectorAll(selector)[nth];
  if (!root) return null;
  const panels = [...root.querySelectorAll('.arboris-panel')];
  return {
    statuses: panels.map(p => p.querySelector('.arboris-status')?.textContent.trim() ?? ''),
    lengths: panels.map(p => p.querySelector('.arboris-panel-text')?.textContent.length ?? 0),
  };
}"""
RUNNING_JS = (
    f"(arg) => {{ const s = ({STATE_JS})(arg); return !!s && s.statuses.includes('running'); }}"
)
KERNEL_IDLE_JS = """() => {
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = nb && nb.sessionContext && nb.sessionContext.session
    && nb.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
# Not awaited in the page: the command's promise resolves only when every cell has run.
RUN_ALL_JS = "() => { window.jupyterapp.commands.execute('runmenu:run-all'); }"
FIRST_PROMPT_JS = """() => {
  const prompt = document.querySelector('.jp-CodeCell .jp-InputPrompt');
  return prompt ? prompt.textContent.trim() : '';
}"""
# Windowed notebooks detach off-screen cells; this test reads every cell's output.
NOTEBOOK_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"}}


def _notebook_copy(root: Path) -> str:
    """The quickstart without outputs, plus the payload cell; returns its file name."""
    book = nbformat.read(QUICKSTART, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    book.metadata.pop("widgets", None)
    book.cells.append(nbformat.v4.new_code_cell(PROBE_CELL.strip()))
    nbformat.write(book, root / QUICKSTART.name)
    return QUICKSTART.name


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    _notebook_copy(root)
    with jupyter_lab(root, home, settings=NOTEBOOK_SETTINGS) as server:
        yield server


@pytest.fixture
def page(lab: Lab) -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def _run_all(page: Page) -> None:
    """Run all once the kernel is ready; trigger again if the first cell did not start."""
    for _ in range(3):
        page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)
        page.evaluate(RUN_ALL_JS)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if page.evaluate(FIRST_PROMPT_JS) not in {"", "[ ]:"}:
                return
            time.sleep(0.1)
    pytest.fail("run-all did not start the first cell after 3 tries")


def _state(page: Page, selector: str = ".arboris-versions", nth: int = 0) -> Any:
    return page.evaluate(STATE_JS, [selector, nth])


def _watch_first_run(page: Page, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Poll the first widget until all its panels are done; return the running samples."""
    running: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _state(page)
        if state and state["statuses"]:
            if "running" in state["statuses"]:
                running.append(state)
            elif running and set(state["statuses"]) == {"done"}:
                return running
        time.sleep(0.05)
    pytest.fail(f"the first widget did not finish: last state {_state(page)}")


def _wait_kernel_done(page: Page, probe: str) -> None:
    """All cells ran: the probe widget (last cell) is done and the kernel is idle."""
    page.wait_for_function(
        "(sel) => [...document.querySelectorAll(sel + ' .arboris-status')]"
        ".some(e => e.textContent.trim() === 'done')",
        arg=probe,
        timeout=60_000,
    )
    page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)


def _collect_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return errors


def _check_streaming(page: Page) -> None:
    """Panels render, text grows while at least one version runs, all end done."""
    samples = _watch_first_run(page)
    assert len(samples[0]["statuses"]) == 3
    totals = [sum(s["lengths"]) for s in samples]
    assert max(totals) > 0, f"no text while running: {samples[-3:]}"
    assert len(set(totals)) >= 3, f"text did not grow while running: {totals}"
    final = _state(page)
    assert final["statuses"] == ["done"] * 3
    assert all(n > 200 for n in final["lengths"]), final


def _check_payload_is_text(page: Page) -> None:
    """Model output is untrusted: the payload shows as text and runs nothing."""
    text = page.locator(".arboris-probe .arboris-panel-text").first
    text.scroll_into_view_if_needed()
    assert text.inner_text().strip() == PAYLOAD
    assert page.locator(".arboris-panel-text img, .arboris-panel-text script").count() == 0
    assert page.evaluate("() => window.__pwned") is None


def _check_stop(page: Page, widget: Locator) -> None:
    """A second run, stopped from the page: its panels show cancelled within a second."""
    widget.scroll_into_view_if_needed()
    widget.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function(RUNNING_JS, arg=[".arboris-versions", 0], timeout=10_000)
    widget.get_by_role("button", name="Stop", exact=True).click()
    clicked = time.monotonic()
    while time.monotonic() - clicked < 1.0:
        if set(_state(page)["statuses"]) == {"cancelled"}:
            break
        time.sleep(0.02)
    assert _state(page)["statuses"] == ["cancelled"] * 3, _state(page)


def test_quickstart_widget_in_jupyterlab(lab: Lab, page: Page) -> None:
    errors = _collect_errors(page)
    page.goto(lab.notebook_url(QUICKSTART.name))
    page.wait_for_selector(".jp-Notebook", timeout=30_000)
    _run_all(page)
    _check_streaming(page)
    _wait_kernel_done(page, ".arboris-probe")
    widget = page.locator(".arboris-versions").first
    widget.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=str(ARTIFACTS / "widget.png"))
    _check_payload_is_text(page)
    _check_stop(page, widget)
    assert not errors, "\n".join(errors)
