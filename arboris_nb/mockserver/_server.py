"""``MockServer``: the mock in a background thread of this program, or in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from ._app import root_url
from ._app import start as start_app
from ._config import MockConfig

__all__ = ["MockServer", "child_main"]

_START_TIMEOUT_S = 30.0


def child_main() -> int:
    """Entry point of ``python -m arboris_nb.mockserver``, run by ``MockServer(process=True)``.

    Reads one JSON line ``{"config": {...}, "host": ..., "port": ...}`` from stdin, prints
    ``READY <port>`` (or ``ERROR <message>``) on stdout, and serves until stdin reaches EOF:
    the parent closes it to stop us, and if the parent dies the pipe closes by itself, so
    no orphaned server outlives the notebook or test that started it.
    """
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = json.loads(sys.stdin.readline())
        kwargs = dict(spec["config"])
        kwargs["fail_requests"] = {int(k): v for k, v in kwargs["fail_requests"].items()}
        asyncio.run(_child_serve(MockConfig(**kwargs), spec["host"], int(spec["port"])))
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


async def _child_serve(config: MockConfig, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(eof.set)

    runner, real_port = await start_app(config, host, port)
    try:
        threading.Thread(target=wait_for_eof, daemon=True).start()
        print(f"READY {real_port}", flush=True)
        await eof.wait()
    finally:
        await runner.cleanup()


class MockServer:
    """Run the mock server in a background thread (or process) of this program.

    ``with MockServer(ttft_s=0.05, capacity=4) as base_url:`` yields
    ``"http://127.0.0.1:<port>/v1"``. Keyword fields override those of ``config``.
    ``process=True`` runs it in a separate process, so a heavy benchmark client does not
    share the GIL with the server.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        process: bool = False,
        **config_fields: Any,
    ) -> None:
        base = config or MockConfig()
        self.config = dataclasses.replace(base, **config_fields) if config_fields else base
        self.host = host
        self.port = port
        self.process = process
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:54321`` (the real port once started)."""
        return root_url(self.host, self.port)

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        """Whether the server was started and not stopped."""
        return self._runner is not None or self._proc is not None

    def start(self) -> str:
        """Start serving and return the base URL."""
        if self.running:
            raise RuntimeError("MockServer is already running")
        if self.process:
            self._start_process()
        else:
            self._start_thread()
        return self.base_url

    def _start_thread(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="arboris-mockserver", daemon=True)
        thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_app(self.config, self.host, self.port), loop)
        try:
            self._runner, self.port = fut.result(_START_TIMEOUT_S)
        except BaseException:
            _stop_loop(loop, thread)
            raise
        self._loop, self._thread = loop, thread

    def _start_process(self) -> None:
        # A fresh interpreter rather than multiprocessing: spawn re-runs an unguarded
        # __main__ script, and fork is unsafe in a process with threads (a Jupyter kernel).
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "arboris_nb.mockserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            self.port = _child_handshake(proc, self.config, self.host, self.port)
        except BaseException:
            _end_process(proc)
            raise
        self._proc = proc
        # Stop the child if this object is dropped or the interpreter exits without stop().
        self._finalizer = weakref.finalize(self, _end_process, proc)

    def stop(self) -> None:
        """Stop serving (streams still running are cut). Safe to call twice."""
        if self._proc is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            _end_process(self._proc)
            self._proc = None
        if self._runner is not None and self._loop is not None and self._thread is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            _stop_loop(self._loop, self._thread)
        self._runner = self._loop = self._thread = None

    def _fetch(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def stats(self, *, log: bool = True) -> dict[str, Any]:
        """The server's ``/stats`` (fetched over HTTP, so it works in process mode too)."""
        return self._fetch("/stats" if log else "/stats?log=0")

    def reset(self) -> None:
        """Clear the server's counters and log (``POST /stats/reset``)."""
        self._fetch("/stats/reset", method="POST")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        mode = "process" if self.process else "thread"
        return f"<MockServer {self.base_url} {mode} {state}>"


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    if not thread.is_alive():
        loop.close()


def _child_handshake(proc: subprocess.Popen[str], config: MockConfig, host: str, port: int) -> int:
    """Send the child its configuration and wait for ``READY <port>``."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    spec = {"config": config.to_kwargs(), "host": host, "port": port}
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=_START_TIMEOUT_S).strip()
    except queue.Empty:
        raise RuntimeError("mock server process did not start in time") from None
    if not line.startswith("READY "):
        raise RuntimeError(f"mock server process failed: {line or 'exited'}")
    return int(line.split()[1])


def _end_process(proc: subprocess.Popen[str]) -> None:
    """Close the child's stdin (its stop signal), then escalate if it lingers."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
