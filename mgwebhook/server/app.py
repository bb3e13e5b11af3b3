"""The aiohttp application factory and the resources it owns."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mgwebhook.config import Settings
from mgwebhook.db.engine import (
    POSTGRES_POOL_SIZE,
    create_engine,
    create_schema,
    create_sqlite_thread_engine,
    session_factory,
)
from mgwebhook.db.subjects import configure_subjects
from mgwebhook.errors import DatabaseUnavailable
from mgwebhook.reconcile import reconcile_context
from mgwebhook.server import WEBHOOK_PATH, handlers
from mgwebhook.server.keys import (
    CLOCK,
    ENGINE,
    METRICS,
    SESSIONS,
    SETTINGS,
    SIGNING_KEYS,
    WRITER,
)
from mgwebhook.server.monitoring import add_monitoring
from mgwebhook.server.writer import (
    AsyncBatchRunner,
    BatchWriter,
    RunBatch,
    thread_batch_runner,
)

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    signing_keys: list[bytes],
    *,
    engine: AsyncEngine | None = None,
    create_tables: bool | None = None,
    clock: Callable[[], float] | None = None,
    reconcile: bool = True,
) -> web.Application:
    """Build the application.

    With no `engine`, one is created from the settings on startup and disposed on
    cleanup. `create_tables` defaults to True for SQLite, whose file the service
    owns, and False for PostgreSQL, where `mgwebhook db upgrade` creates them.
    `reconcile` runs the periodic retry of unmatched events (see mgwebhook.reconcile).
    """
    configure_subjects(settings.subjects)
    # aiohttp raises 413 itself once a body exceeds client_max_size.
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[SIGNING_KEYS] = list(signing_keys)
    if clock is not None:
        app[CLOCK] = clock
    app.cleanup_ctx.append(_database_context(engine, create_tables))
    # Registered after the database so that on shutdown it drains first.
    app.cleanup_ctx.append(_writer_context)
    if reconcile:
        app.cleanup_ctx.append(reconcile_context)
    app.router.add_post(WEBHOOK_PATH, handlers.receive_webhook)
    # Adds /healthz, /readyz and /metrics. A separate metrics port starts after the
    # contexts above, so it stops before them.
    add_monitoring(app)
    return app


def _database_context(
    engine: AsyncEngine | None, create_tables: bool | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        owned = engine is None
        current = engine or create_engine(app[SETTINGS].database.url)
        app[ENGINE] = current
        app[SESSIONS] = session_factory(current)
        create = create_tables if create_tables is not None else current.dialect.name == "sqlite"
        if create:
            try:
                await create_schema(current)
            except DatabaseUnavailable as error:
                # The service still starts: requests get 503 until the database is back.
                logger.error("cannot create the schema on startup: %s", error)
        yield
        if owned:
            await current.dispose()

    return context


async def _writer_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].ingest
    engine = app[ENGINE]
    executor: ThreadPoolExecutor | None = None
    thread_engine: Engine | None = None
    async_runner: AsyncBatchRunner | None = None
    run_batch: RunBatch
    if engine.dialect.name == "sqlite":
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgwebhook-sqlite")
        thread_engine = create_sqlite_thread_engine(engine)
        run_batch = thread_batch_runner(thread_engine, executor)
        writers = 1
    else:
        # Half the pool's connections at most, so other queries always find one.
        keep = min(settings.writers, POSTGRES_POOL_SIZE // 2)
        run_batch = async_runner = AsyncBatchRunner(engine, keep=keep)
        writers = settings.writers
    writer = BatchWriter(
        run_batch,
        queue_size=settings.queue_size,
        max_batch_size=settings.max_batch_size,
        writers=writers,
        on_batch=app[METRICS].observe_batch,
    )
    writer.start()
    app[WRITER] = writer
    yield
    await writer.close()
    if async_runner is not None:
        await async_runner.close()
    if executor is not None and thread_engine is not None:
        executor.submit(thread_engine.dispose).result()
        executor.shutdown()


def sessions(app: web.Application) -> async_sessionmaker[AsyncSession]:
    return app[SESSIONS]
