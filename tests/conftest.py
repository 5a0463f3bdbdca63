"""Shared fixtures. Every test gets its own run store, so nothing writes into $HOME."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.redis"]

_SESSION_STORE_DIR: str | None = None
_SESSION_HOME_DIR: str | None = None
# Jupyter, IPython and matplotlib write config and caches under $HOME; tests (and the
# nbval/JupyterLab kernels, which inherit os.environ) get private folders instead.
_PRIVATE_DIRS = {
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
    "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "matplotlib",
}


def pytest_configure(config: pytest.Config) -> None:
    """A session-wide ARBORIS_STORE too, for items without fixtures (nbval kernels)."""
    global _SESSION_STORE_DIR, _SESSION_HOME_DIR
    _SESSION_STORE_DIR = tempfile.mkdtemp(prefix="arboris-store-")
    os.environ["ARBORIS_STORE"] = str(Path(_SESSION_STORE_DIR) / "runs.sqlite3")
    _SESSION_HOME_DIR = tempfile.mkdtemp(prefix="arboris-home-")
    for name, folder in _PRIVATE_DIRS.items():
        path = Path(_SESSION_HOME_DIR) / folder
        path.mkdir()
        os.environ[name] = str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in (_SESSION_STORE_DIR, _SESSION_HOME_DIR):
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_run_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point ARBORIS_STORE (and the cache switches) at a fresh temp file for each test."""
    path = tmp_path_factory.mktemp("store") / "runs.sqlite3"
    monkeypatch.setenv("ARBORIS_STORE", str(path))
    monkeypatch.delenv("ARBORIS_CACHE", raising=False)
    monkeypatch.delenv("ARBORIS_CACHE_URL", raising=False)
    return path


@pytest.fixture(autouse=True)
def _cold_auto_limits() -> None:
    """Every test's ``auto`` runs start cold: nothing learned by an earlier test."""
    from arboris_nb.limit_memory import forget_learned_limits

    forget_learned_limits()
