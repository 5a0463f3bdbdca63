"""The exception tree of arboris_nb.

    ArborisError
    ├── ConfigError            a setting is missing or out of range (names the setting)
    ├── StateError             an action asked for at the wrong time (nothing selected,
    │                          a version not done, a run still going); says what to do first
    ├── BackendError           one request to the model failed
    │   ├── RateLimited        429 — retryable, may carry retry_after_s
    │   ├── BackendTimeout     read timeout, stall, or version deadline — retryable
    │   ├── ConnectionFailed   could not connect / connection dropped — retryable
    │   ├── StreamInterrupted  the stream ended before it was complete — retryable
    │   ├── ServerError        5xx, 408, 409 — retryable
    │   ├── AuthError          401 / 403 — not retried
    │   └── BadRequest         400 / 404 / 422 — not retried
    ├── EvaluationError        no usable verdict from the judge (in arboris_nb.verdict)
    └── AllVersionsFailed      every version of a run failed; carries the Run

A failure in one version never raises for the batch: it becomes that version's
status and error. Only a run where *nothing* succeeded raises AllVersionsFailed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import Run

__all__ = [
    "AllVersionsFailed",
    "ArborisError",
    "AuthError",
    "BackendError",
    "BackendTimeout",
    "BadRequest",
    "ConfigError",
    "ConnectionFailed",
    "RateLimited",
    "ServerError",
    "StateError",
    "StreamInterrupted",
]


class ArborisError(Exception):
    """Base class of every error arboris_nb raises on purpose."""


class ConfigError(ArborisError, ValueError):
    """A setting is missing, malformed or out of its allowed range."""


class StateError(ArborisError, RuntimeError):
    """An action was asked for in a state that does not allow it.

    Nothing is misconfigured: the same call works once the state is right (a version is
    selected, a version is done, the run has ended). The message says what to do first,
    in words a notebook user can act on; the CLI exits 1 on it (2 is for configuration).
    """


class BackendError(ArborisError):
    """One request to the model failed.

    ``retryable`` tells the engine whether another attempt may succeed;
    ``retry_after_s`` is the server's own wait hint (Retry-After), if any.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class RateLimited(BackendError):
    retryable = True


class BackendTimeout(BackendError):
    retryable = True


class ConnectionFailed(BackendError):
    retryable = True


class StreamInterrupted(BackendError):
    retryable = True


class ServerError(BackendError):
    retryable = True


class AuthError(BackendError):
    """401/403: the key is wrong or lacks access. Retrying cannot help."""


class BadRequest(BackendError):
    """400/404/422: the request itself is wrong (model name, parameters)."""


class AllVersionsFailed(ArborisError):
    """Every version of a run failed. ``run`` keeps each version's error."""

    def __init__(self, run: Run) -> None:
        errors = "; ".join(f"v{v.index}: {v.error}" for v in run.versions if v.error)
        super().__init__(
            f"all {len(run.versions)} versions failed. Check the network and the API "
            f"configuration (OPENAI_API_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL_NAME). "
            f"Errors: {errors}"
        )
        self.run = run
