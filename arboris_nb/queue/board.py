"""A Celery book job's shared record in Redis: where each unit stands and what it produced.

Every worker reaches Redis (it is the broker), but not necessarily the notebook's SQLite
file, so Redis is the truth that workers share and the submitter collects from. Keys,
all under ``arboris_nb:book:<job_id>:`` and each given a TTL (``ARBORIS_BOOK_TTL_S``,
default 30 days) that every write pushes forward::

    units      hash "<chapter>:<version>" → JSON {state, worker, submission, result, at}
    results    hash "<chapter>:<version>" → JSON {status, submission, result, elapsed_s,
                                                   version: Version.to_dict(editor=False)}
    requests   hash "<chapter>:<version>" → attempts paid for, over all deliveries
    cancelled  "1" while the job is cancelled

``units`` is small and polled; ``results`` holds the texts and is read once per result.
A unit's ``state`` there is ``queued`` from when a worker takes its task until it ends: whether
it is *running* — holds a slot of the global limit — is read from the limit's own leases,
which name the unit (:func:`slot_holder`), so "running" never counts more than the limit.
A unit's final write (``results``, ``units`` and ``requests`` together) is one Lua
script, run before the task is acknowledged; an ``ok`` result is never overwritten.
No API key is ever written: a Version carries only the masked ``key_id``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..results import Version

__all__ = [
    "DEFAULT_TTL_S",
    "Board",
    "UnitReport",
    "board_keys",
    "env_seconds",
    "forget_units",
    "read_results",
    "read_units",
    "set_cancelled",
    "slot_holder",
    "ttl_s",
    "unit_field",
]

DEFAULT_TTL_S = 30 * 24 * 3600.0  # a long book runs for days; results wait to be collected
_PREFIX = "arboris_nb:book:"

# KEYS = units, results, requests; ARGV = field, unit JSON, result JSON ('' = none),
# attempts to add, ttl seconds. Attempts are always counted (they were paid for); the
# state and result are written only if no ok result is there. Returns 1 when written.
_RECORD = """
redis.call('HINCRBY', KEYS[3], ARGV[1], ARGV[4])
local prev = redis.call('HGET', KEYS[2], ARGV[1])
local written = 0
if not (prev and cjson.decode(prev)['status'] == 'ok') then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
  written = 1
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return written
"""

# KEYS = units, results; ARGV = fields. Drops the state and result of units about to be
# queued again, except an ok result (a late task may have finished since the plan).
_FORGET = """
for _, f in ipairs(ARGV) do
  local prev = redis.call('HGET', KEYS[2], f)
  if not (prev and cjson.decode(prev)['status'] == 'ok') then
    redis.call('HDEL', KEYS[1], f)
    redis.call('HDEL', KEYS[2], f)
  end
end
return 1
"""


def env_seconds(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A positive number of seconds from the environment; a bad value names the setting."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name} must be a number of seconds above 0, got {raw!r}")
    return value


def ttl_s(env: Mapping[str, str] | None = None) -> int:
    """``ARBORIS_BOOK_TTL_S``: how long a job's keys live after their last write."""
    return max(1, int(env_seconds("ARBORIS_BOOK_TTL_S", DEFAULT_TTL_S, env)))


def board_keys(job_id: str) -> dict[str, str]:
    """The Redis keys of one job, by part (units, results, requests, cancelled)."""
    return {part: f"{_PREFIX}{job_id}:{part}" for part in _PARTS}


_PARTS = ("units", "results", "requests", "cancelled")


def unit_field(chapter: int, version: int) -> str:
    return f"{chapter}:{version}"


def slot_holder(job_id: str, chapter: int, version: int) -> str:
    """How a unit names the leases it takes on the global limit (see ``RedisLimit``)."""
    return f"book:{job_id}:{chapter}:{version}"


def _unit(field: str | bytes) -> tuple[int, int]:
    text = field.decode() if isinstance(field, bytes) else field
    chapter, _, version = text.partition(":")
    return int(chapter), int(version)


@dataclass(frozen=True)
class UnitReport:
    """What Redis says about one unit (the submitter's view)."""

    chapter: int
    version: int
    state: str  # queued | running | ok | failed | cancelled
    worker: str | None
    requests: int
    result: str | None  # id of the stored result, None until the unit ends ok or failed


class Board:
    """A worker's handle on one job's keys (``redis.asyncio`` client)."""

    def __init__(self, client: Any, job_id: str, *, ttl: int | None = None) -> None:
        self.client = client
        self.keys = board_keys(job_id)
        self.ttl = ttl_s() if ttl is None else ttl
        self._record = client.register_script(_RECORD)

    async def cancelled(self) -> bool:
        return bool(await self.client.exists(self.keys["cancelled"]))

    async def result(self, chapter: int, version: int) -> dict[str, Any] | None:
        """The unit's recorded result, or None."""
        raw = await self.client.hget(self.keys["results"], unit_field(chapter, version))
        return None if raw is None else dict(json.loads(raw))

    async def mark(
        self, chapter: int, version: int, state: str, *, worker: str, submission: str
    ) -> bool:
        """Set the unit's state (running, cancelled, failed without a result)."""
        unit = {"state": state, "worker": worker, "submission": submission, "result": None}
        return await self._write(chapter, version, unit, None, attempts=0)

    async def record(
        self,
        chapter: int,
        version: Version,
        *,
        worker: str,
        submission: str,
        elapsed_s: float,
    ) -> bool:
        """Record a unit that ended ok or failed: its Version, state and attempts, in one
        step. False when an ok result was already there (kept; the attempts still count)."""
        result_id = uuid.uuid4().hex
        result = {
            "status": version.status,
            "submission": submission,
            "result": result_id,
            "elapsed_s": elapsed_s,
            "version": version.to_dict(editor=False),
        }
        unit = {
            "state": version.status,
            "worker": worker,
            "submission": submission,
            "result": result_id,
        }
        attempts = version.attempt_count
        return await self._write(chapter, version.index, unit, result, attempts=attempts)

    async def _write(
        self,
        chapter: int,
        version: int,
        unit: dict[str, Any],
        result: dict[str, Any] | None,
        *,
        attempts: int,
    ) -> bool:
        keys = [self.keys["units"], self.keys["results"], self.keys["requests"]]
        args = [
            unit_field(chapter, version),
            json.dumps({**unit, "at": time.time()}),
            "" if result is None else json.dumps(result, ensure_ascii=False),
            attempts,
            self.ttl,
        ]
        return bool(await self._record(keys=keys, args=args))


# -- the submitter's side (synchronous redis client) ---------------------------------------
def read_units(client: Any, job_id: str) -> list[UnitReport]:
    """Every unit Redis knows of, with its attempts (small: no texts)."""
    keys = board_keys(job_id)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys["units"])
    pipe.hgetall(keys["requests"])
    units, requests = pipe.execute()
    paid = {_unit(f): int(n) for f, n in requests.items()}
    reports = []
    for field, raw in units.items():
        data = json.loads(raw)
        chapter, version = _unit(field)
        reports.append(
            UnitReport(
                chapter,
                version,
                str(data["state"]),
                data.get("worker"),
                paid.get((chapter, version), 0),
                data.get("result"),
            )
        )
    return sorted(reports, key=lambda r: (r.chapter, r.version))


def read_results(
    client: Any, job_id: str, units: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], dict[str, Any]]:
    """The recorded results of ``units`` (those without one are left out)."""
    wanted = list(units)
    if not wanted:
        return {}
    raws = client.hmget(board_keys(job_id)["results"], [unit_field(c, v) for c, v in wanted])
    return {unit: json.loads(raw) for unit, raw in zip(wanted, raws, strict=True) if raw}


def forget_units(client: Any, job_id: str, units: Iterable[tuple[int, int]]) -> None:
    """Before queuing units again: drop their old state and result (never an ok one)."""
    fields = [unit_field(c, v) for c, v in units]
    if fields:
        keys = board_keys(job_id)
        client.register_script(_FORGET)(keys=[keys["units"], keys["results"]], args=fields)


def set_cancelled(client: Any, job_id: str, cancelled: bool) -> None:
    """Set or clear the job's cancel flag (it expires with the job's other keys)."""
    key = board_keys(job_id)["cancelled"]
    if cancelled:
        client.set(key, "1", ex=ttl_s())
    else:
        client.delete(key)
