"""Translation of driver and SQLAlchemy errors into DatabaseUnavailable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import SQLAlchemyError

from mgwebhook.errors import DatabaseUnavailable

# asyncpg raises OSError subclasses and its own errors at connect time, and
# TimeoutError when the server does not respond.
_DATABASE_ERRORS = (SQLAlchemyError, OSError, asyncio.TimeoutError, ConnectionError)


def _asyncpg_errors() -> tuple[type[BaseException], ...]:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)


# Every error that means the database failed or could not be reached.
DATABASE_ERRORS = _DATABASE_ERRORS + _asyncpg_errors()


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Raise DatabaseUnavailable from any database or connection error in the block."""
    try:
        yield
    except DATABASE_ERRORS as error:
        raise DatabaseUnavailable(describe(error)) from error


def is_busy(error: BaseException) -> bool:
    """Return whether `error` is SQLite's "database is locked", raised after the busy timeout.

    Another connection holds the write lock then. Every statement of the batch
    would fail in the same way, so retrying its posts one by one only waits again.
    """
    original = getattr(error, "orig", None) or error
    name = getattr(original, "sqlite_errorname", "")
    return isinstance(name, str) and name.startswith("SQLITE_BUSY")


def describe(error: BaseException) -> str:
    """Return a one-line description of a database error without the SQL or parameters."""
    original = getattr(error, "orig", None) or error
    name = type(original).__name__
    # SQLAlchemy's asyncpg adapter raises many server errors as a class named
    # just "Error". The asyncpg error it wraps, its cause, has the specific name.
    if name == "Error" and original.__cause__ is not None:
        name = type(original.__cause__).__name__
    text = str(original).splitlines()[0] if str(original) else ""
    return f"{name}: {text[:200]}" if text else name
