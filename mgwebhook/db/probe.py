"""Short reads for health checks and metrics that give up after a time limit.

On SQLite the async engine does not suit them: it starts every transaction with
BEGIN IMMEDIATE, which waits for the write lock, and a cancelled wait keeps its
connection busy for the whole busy timeout (30 s). So on SQLite the read runs
in a worker thread on a new pysqlite connection that issues no BEGIN for a
SELECT; in WAL mode such a reader does not wait for writers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from mgwebhook.db.errors import describe, translate_errors
from mgwebhook.errors import DatabaseUnavailable

T = TypeVar("T")


async def read_within(
    engine: AsyncEngine, read: Callable[[Connection], T], timeout_seconds: float
) -> T:
    """Run `read` on a connection to the engine's database and return its result.

    Raises TimeoutError when it takes longer than `timeout_seconds`, and
    DatabaseUnavailable on a database or connection error.
    """
    path = engine.url.database
    async with asyncio.timeout(timeout_seconds):
        if engine.dialect.name == "sqlite" and path and path != ":memory:":
            return await asyncio.to_thread(_read_sqlite_file, path, read, timeout_seconds)
        async with translate_errors(), engine.connect() as connection:
            return await connection.run_sync(read)


def _read_sqlite_file(path: str, read: Callable[[Connection], T], timeout_seconds: float) -> T:
    def connect() -> sqlite3.Connection:
        # mode=rw opens an existing file only, so a probe never creates the database.
        return sqlite3.connect(
            f"file:{quote(path)}?mode=rw",
            uri=True,
            timeout=timeout_seconds,
            check_same_thread=False,
        )

    sync_engine = create_sync_engine("sqlite+pysqlite://", creator=connect, poolclass=NullPool)
    try:
        with sync_engine.connect() as connection:
            return read(connection)
    except (SQLAlchemyError, OSError) as error:
        raise DatabaseUnavailable(describe(error)) from error
    finally:
        sync_engine.dispose()
