"""Book units as Celery tasks on a Redis broker, for jobs spread over many workers.

``celery -A arboris_nb.queue.celery_app worker`` (or ``arboris-nb worker``) runs them.
Settings come from the environment of each process:

* ``ARBORIS_CELERY_BROKER`` (else ``ARBORIS_REDIS_URL``, else ``redis://127.0.0.1:6379/0``)
  — broker and result backend; ``ARBORIS_REDIS_URL`` (else the broker) — the global limit;
* ``ARBORIS_STORE`` — the run store the workers write to (shared with the notebook);
* ``ARBORIS_LEASE_S`` — seconds a dead worker keeps a concurrency slot (default 30);
* ``ARBORIS_CELERY_VISIBILITY_S`` — seconds before a task taken by a worker that died is
  handed to another (default 7200: longer than any unit, or live units get a twin).

Delivery is at least once (``acks_late``, ``task_reject_on_worker_lost``): a task may run
again after a crash or a visibility timeout. Each run is idempotent: it skips a version
already ok in the store, and a per-unit claim (a Redis lease of one) makes a twin wait
for the first to end and then skip, so a version is never paid for twice.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Any

from celery import Celery

from ..errors import ConfigError
from ..store import open_store
from .records import BookRecords
from .redis_limit import DEFAULT_LEASE_S, RedisLimit
from .unit import BookSpec, backend_from_spec, run_unit

__all__ = [
    "DEFAULT_BROKER",
    "TASK_NAME",
    "app",
    "broker_url",
    "cancel_job",
    "clear_cancel",
    "execute_unit",
    "generate_unit",
    "make_app",
    "redis_url",
    "submit_units",
]

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
TASK_NAME = "arboris_nb.book.unit"
_DEFAULT_VISIBILITY_S = 7200.0


def broker_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (
        env.get("ARBORIS_CELERY_BROKER", "").strip()
        or env.get("ARBORIS_REDIS_URL", "").strip()
        or DEFAULT_BROKER
    )


def redis_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("ARBORIS_REDIS_URL", "").strip() or broker_url(env)


def _seconds(name: str, default: float, env: Mapping[str, str]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name} must be a number of seconds above 0, got {raw!r}")
    return value


def make_app(broker: str | None = None, env: Mapping[str, str] | None = None) -> Celery:
    """A Celery app on ``broker`` (default: :func:`broker_url`), configured for long,
    expensive, at-least-once tasks."""
    env = os.environ if env is None else env
    url = broker or broker_url(env)
    visibility = _seconds("ARBORIS_CELERY_VISIBILITY_S", _DEFAULT_VISIBILITY_S, env)
    celery = Celery("arboris_nb", broker=url, backend=url)
    celery.conf.update(
        task_acks_late=True,  # a unit is acknowledged only once recorded
        task_reject_on_worker_lost=True,  # a killed pool process puts its task back
        worker_prefetch_multiplier=1,  # no worker hoards units another could run
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            # Sweep for tasks of dead workers often enough to matter for this timeout.
            "unacked_restore_interval": max(1, min(10, int(visibility / 4))),
            "unacked_restore_throttle": 1,
        },
    )
    return celery


app = make_app()


def _cancel_key(job_id: str) -> str:
    return f"arboris_nb:book:{job_id}:cancelled"


def _lease_s() -> float:
    return _seconds("ARBORIS_LEASE_S", DEFAULT_LEASE_S, os.environ)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate_unit(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """One unit in a worker: the engine runs on a fresh loop in this pool process."""
    worker = f"{self.request.hostname or socket.gethostname()}/{os.getpid()}"
    return asyncio.run(execute_unit(payload, worker=worker))


async def execute_unit(payload: dict[str, Any], *, worker: str) -> dict[str, Any]:
    """Skip if cancelled or already ok; else claim the unit and generate it."""
    import redis.asyncio

    spec = BookSpec.from_dict(payload["spec"])
    chapter, version = int(payload["chapter"]), int(payload["version"])
    store, owned = open_store(None)
    if store is None:
        raise ConfigError("the worker needs the run store: set ARBORIS_STORE to a path")
    client = redis.asyncio.Redis.from_url(redis_url())
    try:
        records = BookRecords(store)
        if await client.exists(_cancel_key(spec.job_id)):
            records.set_state(spec.job_id, chapter, version, "cancelled")
            return {"status": "cancelled", "requested": False}
        lease = _lease_s()
        claim = RedisLimit(
            client, 1, name=f"claim:{spec.job_id}:{chapter}:{version}", lease_s=lease
        )
        # A twin of this task (redelivered while the first still runs) waits here.
        async with claim.slot():
            if version in records.ok_versions(spec.job_id, chapter):
                records.set_state(spec.job_id, chapter, version, "ok")
                return {"status": "ok", "requested": False}
            limiter = RedisLimit(client, spec.limit, name=spec.limit_name, lease_s=lease)
            result = await run_unit(
                spec,
                chapter,
                version,
                llm=backend_from_spec(spec.llm),
                limiter=limiter,
                records=records,
                worker=worker,
            )
        return {"status": result.status, "requested": True, "attempts": result.attempts}
    finally:
        await client.aclose()
        if owned:
            store.close()


def submit_units(
    spec: BookSpec, units: list[tuple[int, int]], broker: str | None = None
) -> list[str]:
    """Queue one task per unit; returns the task ids. The payload carries the chapter's
    prompt and the model's public spec — never a key."""
    celery = app if broker is None else make_app(broker)
    ids = []
    with celery.connection_for_write() as conn:
        for chapter, version in units:
            payload = {
                "spec": spec.for_chapter(chapter).to_dict(),
                "chapter": chapter,
                "version": version,
            }
            result = celery.send_task(TASK_NAME, args=[payload], connection=conn)
            ids.append(result.id)
    return ids


def _client(broker: str | None) -> Any:
    import redis

    return redis.Redis.from_url(redis_url() if broker is None else broker)


def cancel_job(job_id: str, broker: str | None = None) -> None:
    """Tell queued tasks of this job to skip (running units finish)."""
    client = _client(broker)
    try:
        client.set(_cancel_key(job_id), "1")
    finally:
        client.close()


def clear_cancel(job_id: str, broker: str | None = None) -> None:
    """Undo :func:`cancel_job` before a resume."""
    client = _client(broker)
    try:
        client.delete(_cancel_key(job_id))
    finally:
        client.close()
