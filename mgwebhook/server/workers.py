"""Running the server in one process, or in several that share one port."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from types import FrameType

from aiohttp import web

from mgwebhook.config import Settings
from mgwebhook.logs import configure_logging
from mgwebhook.server.app import create_app

logger = logging.getLogger("mgwebhook")


def run_server(settings: Settings, keys: list[bytes], *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests and queued commits."""
    web.run_app(
        create_app(settings, keys),
        host=settings.server.host,
        port=settings.server.port,
        shutdown_timeout=settings.server.shutdown_timeout_seconds,
        keepalive_timeout=settings.server.keepalive_timeout_seconds,
        reuse_port=reuse_port or None,
        access_log=None,
        print=None,
    )


def run_workers(settings: Settings, keys: list[bytes], count: int) -> int:
    """Run `count` server processes on one port (SO_REUSEPORT) and return the exit code.

    The kernel spreads connections over the processes. SIGTERM and SIGINT are
    passed on to every process. If one exits on its own, the others are stopped
    too, so a supervisor such as systemd detects the failure and restarts the unit.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(settings, keys), name=f"mgwebhook-worker-{n}")
        for n in range(count)
    ]
    for process in processes:
        process.start()

    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(process.is_alive() for process in processes):
        for process in processes:
            process.join(timeout=0.5)
            if process.exitcode not in (None, 0) and not stopping:
                logger.error(
                    "worker %s exited with code %s; stopping the others",
                    process.name,
                    process.exitcode,
                )
                forward(signal.SIGTERM, None)
    return max(abs(process.exitcode or 0) for process in processes)


def _worker(settings: Settings, keys: list[bytes]) -> None:
    configure_logging(settings.logging.level, settings.logging.format)
    run_server(settings, keys, reuse_port=True)
