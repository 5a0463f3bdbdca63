"""What a reader of the committed notebooks sees without running them (GitHub, nbviewer,
JupyterLab without a kernel): every figure as an image, each live widget's final state as
static HTML after it (``render_run`` / ``render_book``) holding every version's text, and
the widget state saved. These check the saved files that ``make notebook-outputs`` writes.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from arboris_nb import text_metrics

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# A live widget (by its text repr) → the class of the static view that must follow it.
STATIC_VIEW = {"VersionsWidget(": "arboris-run", "BookProgress(": "arboris-book-view"}


def read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)


def data_of(cell: Any) -> list[dict[str, Any]]:
    return [o.get("data", {}) for o in cell.get("outputs", []) if "data" in o]


def code_cells(book: Any) -> list[Any]:
    return [c for c in book.cells if c.cell_type == "code"]


def visible(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def book(request: pytest.FixtureRequest) -> Any:
    return read(request.param)


def test_every_plot_cell_holds_an_image(book: Any) -> None:
    plot_cells = [c for c in code_cells(book) if re.search(r"^plot_\w+\(", c.source, re.M)]
    for cell in plot_cells:
        images = [d["image/png"] for d in data_of(cell) if "image/png" in d]
        assert images, f"no image saved for: {cell.source!r}"
        assert base64.b64decode(images[0]).startswith(b"\x89PNG")
        texts = [d.get("text/plain", "") for d in data_of(cell)]
        assert not any(t.startswith("<Figure size") for t in texts), cell.source


def test_each_live_widget_is_followed_by_its_static_view(book: Any) -> None:
    needed: list[str] = []  # static views still owed, in display order
    for cell in code_cells(book):
        for data in data_of(cell):
            shown = "".join(data.get("text/html", ""))
            if needed and f'class="{needed[0]}"' in shown:
                needed.pop(0)
            if WIDGET_VIEW in data:
                text = "".join(data.get("text/plain", ""))
                needed += [view for start, view in STATIC_VIEW.items() if text.startswith(start)]
    assert needed == [], "a widget is shown with no render_run/render_book output after it"


def test_rendered_panels_hold_each_versions_full_text(book: Any) -> None:
    for cell in code_cells(book):
        for data in data_of(cell):
            markup = "".join(data.get("text/html", ""))
            if 'class="arboris-run"' in markup:
                _check_run_view(markup)


def _check_run_view(markup: str) -> None:
    assert "<script" not in markup.lower()
    count = int(re.search(r"· (\d+) versions", markup).group(1))  # type: ignore[union-attr]
    panels = re.findall(r'<div class="arboris-run-(version|retry)"[^>]*>(.*?)</div>', markup)
    assert [kind for kind, _ in panels].count("version") == count
    table = re.search(r'<table class="arboris-run-metrics">(.*?)</table>', markup)
    words = {}  # metrics row name ("2", "2 · retry 1") -> words
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1) if table else "")[1:]:
        cells = [visible(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        words[cells[0]] = int(cells[2])
    for _, panel in panels:
        header, *paragraphs = re.findall(r"<p>(.*?)</p>", panel)
        name = re.search(r"Version (\d+(?: · retry \d+)?)", visible(header))
        assert name, header
        text = "\n".join(visible(p) for p in paragraphs if not p.startswith("<i>"))
        if " · ok" in visible(header):
            # The panel holds the whole text: its word count is the metrics table's.
            assert text and text_metrics(text)["words"] == words[name.group(1)], header
        else:
            assert text, f"panel {name.group(1)} shows nothing"


def test_widget_state_is_saved_for_every_widget_shown(book: Any) -> None:
    state = book.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    shown = [d[WIDGET_VIEW]["model_id"] for c in code_cells(book) for d in data_of(c)
             if WIDGET_VIEW in d]  # fmt: skip
    missing = [model for model in shown if model not in state]
    assert missing == [], f"{len(missing)} of {len(shown)} widgets have no saved state"
