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

from realtime_llm.cli import STARTUP_FAILURE, configure_logging, describe, run_server
from realtime_llm.config import Settings
from realtime_llm.metrics import MULTIPROC_ENV

logger = logging.getLogger("realtime_llm.workers")
spawn = multiprocessing.get_context("spawn")

CHECK_INTERVAL = 0.5
STOP_MARGIN = 15.0  # beyond the shutdown grace, for closing sockets and the lifespan


def worker_main(settings: Settings, listener: socket.socket, started: ProcessEvent) -> None:
    configure_logging()
    sys.exit(run_server(settings, [listener], lambda host, port: started.set()))


class Worker:
    def __init__(self, index: int, settings: Settings, listener: socket.socket) -> None:
        self.index = index
        self.started = spawn.Event()
        self.process: SpawnProcess = spawn.Process(
            target=worker_main, args=(settings, listener, self.started), name=f"realtime-llm-worker-{index}",
        )
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


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
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    workers = [Worker(i, settings, listener) for i in range(n)]
    try:
        if not _wait_started(workers, stopping):
            return 0 if stopping.is_set() else STARTUP_FAILURE
        host, port = listener.getsockname()[:2]
        print(describe(settings, host, port), flush=True)
        while not stopping.wait(CHECK_INTERVAL):
            for i, worker in enumerate(workers):
                if worker.process.is_alive():
                    continue
                logger.warning("worker %d (pid %d) exited with %s; starting another",
                               worker.index, worker.pid, worker.process.exitcode)
                _forget(worker)
                workers[i] = Worker(worker.index, settings, listener)
        return 0
    finally:
        _stop(workers, settings.server.shutdown_grace_seconds + STOP_MARGIN)
        listener.close()
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


def _forget(worker: Worker) -> None:
    """A dead worker's live gauges (open sockets, running generations) must stop counting."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)


def _stop(workers: list[Worker], timeout: float) -> None:
    for worker in workers:
        if worker.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            logger.warning("worker %d (pid %d) did not stop in time; killing it", worker.index, worker.pid)
            worker.process.kill()
            worker.process.join()

