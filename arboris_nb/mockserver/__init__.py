"""An OpenAI-compatible chat server for tests and benchmarks: latency, load, limits, faults.

It speaks ``POST /v1/chat/completions`` (JSON and SSE streaming), ``GET /v1/models``, and adds
``GET /stats`` / ``POST /stats/reset`` so a test or a notebook can see what the server saw.

What it models (see ``docs/mockserver.md``):

* latency: time to first token, a steady token rate, optional multiplicative jitter, and a
  heavy tail (``straggler_rate`` of requests ``straggler_factor`` times slower);
* load: a generation ``capacity`` with a FIFO queue behind it (like vLLM's ``max_num_seqs``)
  and a ``slowdown`` that stretches latencies as the server fills up — slower, never a 429;
* rate limits as providers apply them: a concurrency cap (``max_concurrent``), a rolling
  ``rpm_limit``, OpenAI-style request and token budgets with ``x-ratelimit-*`` headers, and
  a rate-limit window (``window_s``) that refuses everything until it ends;
* faults: a random ``error_rate`` (500), a random ``disconnect_rate`` (a stream cut mid-way)
  and scripted ``fail_requests`` by arrival number.

Random draws for request *n* come from ``random.Random(f"{seed}/{n}")``: a per-request
generator rather than one shared stream, so which requests fail does not depend on how
concurrent requests interleave on the event loop, only on the seed and the arrival order.

Modules: ``_config`` (MockConfig), ``_text`` (reply text), ``_ratelimit`` (the limits),
``_state`` (counters, log, capacity queue), ``_app`` (HTTP handlers, serving) and
``_server`` (MockServer in a thread or a child process).
"""

from __future__ import annotations

from ._app import make_app, serve
from ._config import MockConfig
from ._server import MockServer

__all__ = ["MockConfig", "MockServer", "make_app", "serve"]
