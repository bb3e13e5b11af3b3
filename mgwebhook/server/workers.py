"""Running the server in one process, or in several that share one port."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
from typing import NoReturn

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


def check_port(host: str, port: int) -> None:
    """Raise OSError when the server processes could not listen on this address."""
    with socket.create_server((host, port), reuse_port=True):
        pass


def run_workers(settings: Settings, keys: list[bytes], count: int) -> NoReturn:
    """Replace this process with the supervisor of `count` server processes on one port.

    See mgwebhook.server.supervisor. The settings and keys go through an
    in-memory file (a pipe outside Linux), so they never appear on a command
    line.
    """
    descriptor = _settings_descriptor(pickle.dumps((settings, keys)))
    sys.stdout.flush()
    sys.stderr.flush()
    module = "mgwebhook.server.supervisor"
    os.execv(sys.executable, [sys.executable, "-m", module, str(descriptor), str(count)])


def _settings_descriptor(blob: bytes) -> int:
    """Return an inheritable file descriptor positioned at the start of `blob`.

    Linux keeps the bytes in an anonymous memory file, so neither the size of
    the settings nor the disk is a concern. Elsewhere a pipe carries them, and
    the write blocks if they do not fit in the pipe's buffer.
    """
    if hasattr(os, "memfd_create"):
        descriptor = os.memfd_create("mgwebhook-settings", 0)
        os.write(descriptor, blob)
        os.lseek(descriptor, 0, os.SEEK_SET)
    else:
        descriptor, write_end = os.pipe()
        with os.fdopen(write_end, "wb") as sink:
            sink.write(blob)
    os.set_inheritable(descriptor, True)
    return descriptor


def _worker_main() -> None:
    """Run one server process with the settings and keys read from standard input."""
    settings, keys = pickle.loads(sys.stdin.buffer.read())
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        run_server(settings, keys, reuse_port=True)
    except OSError as error:
        logger.error("worker %d cannot start the server: %s", os.getpid(), error)
        sys.exit(1)


if __name__ == "__main__":
    _worker_main()
