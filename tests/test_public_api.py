"""The public surface: ``__all__`` is complete, sorted, and every name resolves."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import arboris_nb


def test_all_names_resolve_and_are_sorted() -> None:
    assert arboris_nb.__all__ == sorted(arboris_nb.__all__)
    for name in arboris_nb.__all__:
        assert getattr(arboris_nb, name) is not None


def test_all_lists_every_public_name() -> None:
    public = {n for n in vars(arboris_nb) if not n.startswith("_")}
    modules = {n for n, v in vars(arboris_nb).items() if type(v).__name__ == "module"}
    assert public - modules - {"annotations", "logging"} <= set(arboris_nb.__all__)


def test_every_module_declares_all() -> None:
    missing = []
    for info in pkgutil.walk_packages(arboris_nb.__path__, "arboris_nb."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__"):
            missing.append(info.name)
        else:
            missing += [f"{info.name}.{n}" for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_contract_names() -> None:
    for name in (
        "WriterSettings",
        "LLMConfig",
        "SimulatedLLM",
        "OpenAIBackend",
        "generate_versions",
        "generate_versions_sync",
        "Run",
        "Version",
        "ArborisError",
        "ConfigError",
        "AllVersionsFailed",
    ):
        assert name in arboris_nb.__all__


HEAVY = ("openai", "aiohttp", "ipywidgets", "IPython", "pandas", "matplotlib")
PROBE = """
import sys
from arboris_nb.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = {heavy!r}
print(",".join(m for m in heavy if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["generate", "--simulated", "--prompt", "p", "--versions", "1", "--json"]],
    ids=["help", "generate-simulated"],
)
def test_the_cli_does_not_import_what_the_command_does_not_need(argv: list[str]) -> None:
    env = {**os.environ, "ARBORIS_STORE": "off", "OPENAI_API_KEY": "", "OPENAI_API_KEYS": ""}
    code = PROBE.format(heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.splitlines()[-1] == ""


def test_lazy_names_resolve_and_are_listed() -> None:
    for name in ("OpenAIBackend", "KeyPool", "VersionsWidget"):
        assert name in dir(arboris_nb)
        assert getattr(arboris_nb, name).__name__ == name
    with pytest.raises(AttributeError, match="no_such_name"):
        arboris_nb.no_such_name  # noqa: B018
