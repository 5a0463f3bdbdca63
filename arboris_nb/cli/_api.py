"""The API flags every subcommand shares: ``--model``, ``--base-url``, ``--api-key-env``."""

from __future__ import annotations

import argparse
import os

from ..config import LLMConfig
from ..errors import ConfigError

__all__ = ["config_from_args"]

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


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
