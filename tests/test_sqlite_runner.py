"""The SQLite batch runner when another connection holds the database's write lock."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mgwebhook.db import engine as engine_module
from mgwebhook.db.engine import create_sqlite_thread_engine
from mgwebhook.errors import DatabaseUnavailable
from mgwebhook.ingest import apply_each
from mgwebhook.server.writer import thread_batch_runner
from tests.helpers import insert_document, status_of
from tests.test_batch_runner import delivered
from tests.test_batching import NOW

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def thread_engine(engine, monkeypatch) -> Iterator[Engine]:
    """The writer thread's engine, waiting 0.1 s for a lock instead of the default."""
    # Read when each connection opens, so only the engine made here waits 0.1 s.
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 100)
    current = create_sqlite_thread_engine(engine)
    yield current
    current.dispose()


@contextmanager
def write_lock(database_url: str) -> Iterator[None]:
    """Hold the database's write lock from another connection."""
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


async def test_locked_database_fails_batch_once(engine, database_url, thread_engine, caplog):
    for number in range(3):
        await insert_document(engine, f"INV-{number}", f"<runner-{number}@mg.example.com>")
    executor = ThreadPoolExecutor(max_workers=1)
    run = thread_batch_runner(thread_engine, executor)

    with (
        write_lock(database_url),
        caplog.at_level(logging.WARNING),
        pytest.raises(DatabaseUnavailable) as raised,
    ):
        await run([delivered(number) for number in range(3)], NOW)
    executor.shutdown()

    assert str(raised.value) == "OperationalError: database is locked"
    # No retry one post at a time, and no error per post.
    assert caplog.records == []
    assert await status_of(engine, "INV-0") == "SENT"


def test_locked_database_fails_posts_together(database_url, thread_engine, caplog):
    with (
        write_lock(database_url),
        caplog.at_level(logging.WARNING),
        pytest.raises(OperationalError, match="database is locked"),
        Session(thread_engine) as session,
        session.begin(),
    ):
        apply_each(session, [delivered(number) for number in range(3)], NOW)

    assert caplog.records == []
