"""Re-execute notebooks in a fresh kernel and save their outputs (what nbval compares).

    .venv/bin/python scripts/run_notebooks.py [notebooks/01_quickstart.ipynb ...]

With no argument, every ``notebooks/*.ipynb``. The kernel is this interpreter (the venv),
started with private Jupyter/IPython/matplotlib folders and without any ``OPENAI_*``
variable, so saved outputs hold no key and nothing from your home directory. Widget state
is saved (``metadata.widgets``), so a reader with a widget renderer (nbviewer, JupyterLab
without a kernel) sees the widgets as they ended; cell timings are not (they change on
every run and say nothing to a reader).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
_PRIVATE = (
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "IPYTHONDIR",
    "MPLCONFIGDIR",
)


def _isolate(home: Path) -> None:
    """Private folders, no API settings, and a ``python3`` kernelspec = this Python."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "ARBORIS_CACHE", "WRITER_")):
            del os.environ[name]
    for name in _PRIVATE:
        os.environ[name] = str(home / name.lower())
    os.environ["ARBORIS_STORE"] = str(home / "runs.sqlite3")
    spec = home / "jupyter_data_dir" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")


def execute(path: Path) -> None:
    """Run every cell of ``path`` (in its own folder) and write the outputs back."""
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book,
        kernel_name="python3",
        timeout=600,
        record_timing=False,
        store_widget_state=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    nbformat.write(book, path)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="arboris-nbrun-") as home:
        _isolate(Path(home))
        for path in paths:
            print(f"executing {path} …", flush=True)
            execute(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
