"""The public surface: ``__all__`` is complete, sorted, and every name resolves."""

from __future__ import annotations

import importlib
import pkgutil

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
