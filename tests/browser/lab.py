"""A throwaway JupyterLab or Notebook 7 for the browser test: 127.0.0.1, no token, private
folders.

Everything the server and its kernels read or write lives under one temp folder: config,
data (with a kernelspec pointing at this venv's Python), runtime, settings (the news
popup is off) and workspaces. The server runs in its own process group so the test can
stop it and every kernel it started in one kill.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FRONT_ENDS", "Lab", "jupyter_lab"]

#: front-end -> (python -m module, app class for options, notebook URL path)
FRONT_ENDS = {
    "lab": ("jupyterlab", "LabApp", "lab/tree"),
    "notebook": ("notebook", "JupyterNotebookApp", "notebooks"),
}

# Settings a fresh JupyterLab would otherwise ask about in a popup that covers the page.
_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@dataclass(frozen=True)
class Lab:
    """A running server: its URL, the folder it serves and its front-end."""

    url: str
    root: Path
    log: Path
    front_end: str = "lab"

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/{FRONT_ENDS[self.front_end][2]}/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _private_env(home: Path) -> dict[str, str]:
    """This process's environment minus API settings, with every Jupyter folder private."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ARBORIS_CACHE", "JUPYTER", "WRITER_"))
    }
    folders = {
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTERLAB_SETTINGS_DIR": "settings",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "IPYTHONDIR": "ipython",
        "MPLCONFIGDIR": "matplotlib",
    }
    for name, folder in folders.items():
        path = home / folder
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env["ARBORIS_STORE"] = str(home / "runs.sqlite3")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _write_kernelspec(data_dir: Path) -> None:
    """``python3`` = this interpreter (the venv), whatever ``python`` is on PATH."""
    spec = data_dir / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")


def _write_settings(settings_dir: Path, settings: Mapping[str, Mapping[str, object]]) -> None:
    for plugin, values in {**_SETTINGS, **settings}.items():
        package, name = plugin.rsplit("/", 1)
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"jupyter not ready after {timeout_s} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole group (server and kernels), SIGKILL what is left after 5 s."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def jupyter_lab(
    root: Path,
    home: Path,
    *,
    settings: Mapping[str, Mapping[str, object]] | None = None,
    front_end: str = "lab",
    timeout_s: float = 60.0,
) -> Iterator[Lab]:
    """Start this venv's JupyterLab (or Notebook 7: ``front_end="notebook"``) serving
    ``root``; stop it (and its kernels) on exit.

    ``settings`` maps a plugin id (``@jupyterlab/notebook-extension/tracker``) to user
    settings for it, added to the ones that turn off the news popup.
    """
    env = _private_env(home)
    _write_kernelspec(Path(env["JUPYTER_DATA_DIR"]))
    _write_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]), settings or {})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / f"jupyter-{front_end}.log"
    module, app, _path = FRONT_ENDS[front_end]
    command = [
        sys.executable,
        "-m",
        module,
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.token=",
        "--ServerApp.password=",
        f"--{app}.expose_app_in_browser=True",
        f"--ServerApp.root_dir={root}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(url, proc, log, timeout_s)
        yield Lab(url=url, root=root, log=log, front_end=front_end)
    finally:
        _stop(proc)
