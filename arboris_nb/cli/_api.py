"""The API flags the subcommands share, declared once: ``--model``, ``--base-url``,
``--api-key-env``, the offline switch (``--simulated``, or ``bench --mock``), and the key
pool read from ``OPENAI_API_KEYS``."""

from __future__ import annotations

import argparse
import os

from ..backends.simulated import SimulatedLLM
from ..config import LLMConfig, load_api_keys
from ..errors import ConfigError

__all__ = [
    "DEFAULT_KEY_ENV",
    "add_api_flags",
    "api_flags_given",
    "config_from_args",
    "llm_from_args",
    "simulated_from_args",
]

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def add_api_flags(
    parser: argparse.ArgumentParser,
    *,
    offline: tuple[str, str] = ("--simulated", "use the offline simulated model"),
    model_default: str = "OPENAI_MODEL_NAME or gpt-4o-mini",
    pool: bool = False,
) -> None:
    """Add ``--model``, ``--base-url``, ``--api-key-env`` and the ``offline`` switch
    (flag, help); the switch and ``--base-url`` exclude each other. ``pool``: the command
    reads a key pool with :func:`llm_from_args` (the help says so)."""
    pooled = "; several comma-separated keys in OPENAI_API_KEYS form a key pool"
    where = parser.add_mutually_exclusive_group()
    where.add_argument(offline[0], action="store_true", help=offline[1])
    where.add_argument(
        "--base-url", help="OpenAI-compatible base URL (default: OPENAI_API_BASE_URL)"
    )
    parser.add_argument("--model", help=f"model name (default: {model_default})")
    parser.add_argument(
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        metavar="VAR",
        help=f"environment variable holding the API key (default: {DEFAULT_KEY_ENV}"
        f"{pooled if pool else ''})",
    )


def simulated_from_args(args: argparse.Namespace) -> SimulatedLLM:
    """The offline model, named ``--model`` if given."""
    return SimulatedLLM(model=args.model or "simulated")


def api_flags_given(args: argparse.Namespace) -> bool:
    """True when any API flag was set (else a command may use its own default model)."""
    return bool(args.base_url or args.model or args.api_key_env != DEFAULT_KEY_ENV)


def config_from_args(args: argparse.Namespace) -> LLMConfig:
    """``LLMConfig.from_env()`` with the flags laid over it.

    A key variable named with ``--api-key-env`` must be set: silently falling back to no
    key would send unauthenticated requests and fail far from the typo.
    """
    if args.api_key_env != DEFAULT_KEY_ENV and not os.environ.get(args.api_key_env):
        raise ConfigError(f"--api-key-env: the variable {args.api_key_env} is not set")
    return LLMConfig.from_env(
        api_key_env=args.api_key_env, model=args.model, base_url=args.base_url
    )


def llm_from_args(args: argparse.Namespace) -> LLMConfig | list[LLMConfig]:
    """:func:`config_from_args`, or a key pool — one config per key, round-robin by
    version — when ``OPENAI_API_KEYS`` holds several keys and ``--api-key-env`` is left
    at its default (a named variable means that one key)."""
    config = config_from_args(args)
    keys = load_api_keys() if args.api_key_env == DEFAULT_KEY_ENV else []
    if len(keys) > 1:
        return [config.with_(api_key=key) for key in keys]
    return config
