"""The parent of `mgwebhook serve --workers N`: start the server processes and watch them.

`serve` replaces its own process with this module (`python -m
mgwebhook.server.supervisor FD COUNT`), so the parent keeps its process id
for systemd but drops the memory of the command line tool and of the server
code, which it never runs. The settings and signing keys arrive pickled on
file descriptor FD and go to every worker on its standard input, never on a
command line.

The kernel spreads connections over the workers (SO_REUSEPORT). SIGTERM and
SIGINT are passed on to every worker. If one exits on its own, the others are
stopped too, so that a supervisor such as systemd detects the failure and
restarts the unit.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from types import FrameType

from mgwebhook.config import Settings
from mgwebhook.logs import configure_logging

logger = logging.getLogger("mgwebhook")

WORKER_MODULE = "mgwebhook.server.workers"
POLL_SECONDS = 0.2


def supervise(settings: Settings, keys: list[bytes], count: int) -> int:
    """Run `count` workers until they have all exited; return the exit code for the parent.

    Each worker gets the settings and keys on its standard input. With a
    separate metrics port, worker N serves /metrics on that port plus N, since
    each process counts its own requests.

    The code is that of the first worker that exited on its own with an error
    (a negative code, death by a signal, counts as the signal number), or else
    the highest code of the workers.
    """
    workers = [_start_worker(settings, keys, number) for number in range(count)]
    stopping = False
    first_failure: int | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(worker.poll() is None for worker in workers):
        for number, worker in enumerate(workers):
            code = worker.poll()
            if code not in (None, 0) and not stopping:
                first_failure = code
                logger.error(
                    "worker %d (pid %d) exited with code %s; stopping the others",
                    number,
                    worker.pid,
                    code,
                )
                forward(signal.SIGTERM, None)
        time.sleep(POLL_SECONDS)
    if first_failure is not None:
        return abs(first_failure)
    return max(abs(worker.returncode or 0) for worker in workers)


def _start_worker(settings: Settings, keys: list[bytes], number: int) -> subprocess.Popen[bytes]:
    port = worker_metrics_port(settings, number)
    own = replace(settings, server=replace(settings.server, metrics_port=port))
    worker = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE)
    assert worker.stdin is not None
    worker.stdin.write(pickle.dumps((own, keys)))
    worker.stdin.close()
    logger.debug("started worker %d (pid %d)", number, worker.pid)
    return worker


def worker_metrics_port(settings: Settings, number: int) -> int:
    """Return the /metrics port of worker `number`: 0 (the main port) or its own port."""
    base = settings.server.metrics_port
    return base + number if base else 0


def main() -> None:
    descriptor, count = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(descriptor, "rb") as source:
        settings_blob = source.read()
    settings, keys = pickle.loads(settings_blob)
    configure_logging(settings.logging.level, settings.logging.format)
    code = supervise(settings, keys, count)
    logger.info("mgwebhook stopped")
    sys.exit(code)


if __name__ == "__main__":
    main()
