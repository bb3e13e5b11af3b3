"""Engine and session setup for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy import create_engine as create_sync_engine_from_url
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mgwebhook.db.errors import translate_errors
from mgwebhook.db.schema import SCHEMA_REVISION, VERSION_TABLE
from mgwebhook.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_COMMAND_TIMEOUT_S = 30
# Connections the pool keeps open; up to as many again open when it is busy.
POSTGRES_POOL_SIZE = 10


def normalise_database_url(url: str) -> str:
    """Return `url` with the async driver mgwebhook uses for its dialect."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for a database URL."""
    url = normalise_database_url(url)
    try:
        dialect = make_url(url).get_dialect().name
    except Exception as error:  # noqa: BLE001 - any parse failure is a config error
        raise ConfigError(
            f"database url is invalid ({type(error).__name__}); use "
            "sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB"
        ) from None

    if dialect == "sqlite":
        engine = create_async_engine(url)
        _configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=10,
        pool_timeout=10,
        connect_args={
            "timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "command_timeout": POSTGRES_COMMAND_TIMEOUT_S,
        },
    )


def create_sqlite_thread_engine(engine: AsyncEngine) -> Engine:
    """Create a synchronous engine on the same SQLite file, for use from worker threads.

    aiosqlite hops to its thread once per statement; running a whole batch in
    one worker-thread call on this engine avoids that cost.
    """
    url = engine.url.set(drivername="sqlite+pysqlite")
    sync_engine = create_sync_engine_from_url(url, connect_args={"check_same_thread": False})
    _configure_sqlite(sync_engine)
    return sync_engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables or update them to the code's revision.

    A database already at `SCHEMA_REVISION` is left alone without loading
    Alembic, because its import alone takes about 0.3 s and short commands
    such as `events list` run this on SQLite every time.
    """
    if await stored_revision(engine) == SCHEMA_REVISION:
        return
    from mgwebhook.db.migrate import upgrade_schema

    await upgrade_schema(engine)


async def stored_revision(engine: AsyncEngine) -> str | None:
    """Return the revision in mgwebhook's version table, or None when the table is missing."""

    def has_version_table(connection: Connection) -> bool:
        return inspect(connection).has_table(VERSION_TABLE)

    async with translate_errors(), engine.connect() as connection:
        if not await connection.run_sync(has_version_table):
            return None
        result = await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        return result.scalar()


async def schema_behind(engine: AsyncEngine) -> str | None:
    """Return why the database's schema cannot serve this code, or None when it can."""
    revision = await stored_revision(engine)
    head = SCHEMA_REVISION
    if revision == head:
        return None
    if revision is None:
        return f"the database has no mgwebhook schema; run: mgwebhook db upgrade (to {head})"
    return (
        f"the database schema is at revision {revision} and this code needs {head}; "
        "run: mgwebhook db upgrade"
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver so that "begin" below runs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL makes every commit durable across a power loss, which a 200 promises.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock at the start, so two writers wait on
        # busy_timeout instead of failing when a read lock cannot be upgraded.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
