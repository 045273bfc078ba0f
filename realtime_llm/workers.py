"""`serve --workers N`: one listening socket shared by N worker processes.

The parent binds the socket, starts the workers (spawned, each a whole server with its own
event loop, database pool and Redis connections; Redis is what joins them), announces the
server once every worker has started, starts a new worker when one dies, and passes
SIGINT/SIGTERM on so that each worker shuts down gracefully.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent

from realtime_llm.config import Settings
from realtime_llm.logs import configure_logging
from realtime_llm.metrics import MULTIPROC_ENV
from realtime_llm.server import STARTUP_FAILURE, describe, run_server

logger = logging.getLogger("realtime_llm.workers")
spawn = multiprocessing.get_context("spawn")

CHECK_INTERVAL = 0.5
# Beyond the shutdown grace: stopping the answers (6 s at most), closing sockets and the
# remaining connections (10 s), the lifespan's close (5 s), and some slack.
STOP_MARGIN = 30.0
STEADY_SECONDS = 30.0  # a worker that lived this long was fine: restart the next one at once
MAX_RESTART_DELAY = 30.0


def worker_main(settings: Settings, listener: socket.socket, started: ProcessEvent, parent: int) -> None:
    _stop_with_parent(parent)
    configure_logging(settings.server.log_level)
    sys.exit(run_server(settings, [listener], lambda host, port: started.set()))


def _stop_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker if the parent dies (kill -9), so no worker runs unsupervised."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Worker:
    def __init__(self, index: int, settings: Settings, listener: socket.socket) -> None:
        self.index = index
        self.born = time.monotonic()
        self.started = spawn.Event()
        self.process: SpawnProcess = spawn.Process(
            target=worker_main, args=(settings, listener, self.started, os.getpid()),
            name=f"realtime-llm-worker-{index}",
        )
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


class Signals:
    """SIGINT/SIGTERM to the parent: the first stops gracefully, a second cuts it short."""

    def __init__(self) -> None:
        self.received = 0
        self.stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        self.stopping.set()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=2048)
    listener.set_inheritable(True)
    return listener


def run_workers(settings: Settings) -> int:
    n = settings.server.workers
    try:
        listener = bind(settings.server.host, settings.server.port)
    except OSError as exc:
        print(f"realtime-llm: cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    # Workers write their metrics to files here, so a scrape of any one sums up all of them.
    metrics_dir = None
    if MULTIPROC_ENV not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="realtime-llm-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    signals = Signals()
    started = [Worker(i, settings, listener) for i in range(n)]
    workers: list[Worker | None] = list(started)  # the supervisor puts a worker it is replacing at None
    try:
        if not _wait_started(started, signals.stopping):
            return 0 if signals.stopping.is_set() else STARTUP_FAILURE
        host, port = listener.getsockname()[:2]
        print(describe(settings, host, port), flush=True)
        _supervise(workers, settings, listener, signals.stopping)
        return 0
    finally:
        # Our copy of the socket must close too, or the kernel would go on queueing
        # connections that no one accepts while the workers drain.
        listener.close()
        _stop(workers, settings.server.shutdown_grace_seconds + STOP_MARGIN, signals)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait_started(workers: list[Worker], stopping: threading.Event) -> bool:
    """True once every worker serves; False if one ended before it could (its log says why)."""
    while not stopping.is_set():
        if all(w.started.is_set() for w in workers):
            return True
        for worker in workers:
            if not worker.process.is_alive() and not worker.started.is_set():
                print(f"realtime-llm: worker {worker.index} could not start (exit status "
                      f"{worker.process.exitcode}); stopping", file=sys.stderr)
                return False
        time.sleep(0.05)
    return False


def _supervise(workers: list[Worker | None], settings: Settings, listener: socket.socket,
               stopping: threading.Event) -> None:
    """Start a new worker when one dies; after deaths in quick succession (the database or
    Redis is down, say) wait longer each time, up to MAX_RESTART_DELAY."""
    delays = [0.0] * len(workers)
    due = [0.0] * len(workers)
    while not stopping.wait(CHECK_INTERVAL):
        now = time.monotonic()
        for i, worker in enumerate(workers):
            if worker is not None:
                if worker.process.is_alive():
                    continue
                lived = now - worker.born
                delays[i] = 0.0 if lived >= STEADY_SECONDS else min(max(delays[i] * 2, 1.0), MAX_RESTART_DELAY)
                logger.warning("worker %d (pid %d) exited with %s; starting another in %.0fs",
                               i, worker.pid, worker.process.exitcode, delays[i])
                _forget(worker)
                workers[i], due[i] = None, now + delays[i]
            if workers[i] is None and now >= due[i]:
                workers[i] = Worker(i, settings, listener)


def _forget(worker: Worker) -> None:
    """A dead worker's live gauges (open sockets, running generations) must stop counting."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)


def _stop(workers: list[Worker | None], timeout: float, signals: Signals) -> None:
    """SIGTERM every worker and wait for them; a second signal to the parent is passed on as
    SIGINT (uvicorn's "stop now"); past the timeout, SIGKILL."""
    alive = [w for w in workers if w is not None and w.process.is_alive()]
    for worker in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    forwarded = signals.received
    while alive and time.monotonic() < deadline:
        if signals.received > max(forwarded, 1):
            forwarded = signals.received
            for worker in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGINT)
        alive[0].process.join(0.1)
        alive = [w for w in alive if w.process.is_alive()]
    for worker in alive:
        logger.warning("worker %d (pid %d) did not stop in time; killing it", worker.index, worker.pid)
        worker.process.kill()
        worker.process.join()
