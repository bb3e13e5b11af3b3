"""Group commit: verified posts wait in a bounded queue while a writer applies them in batches.

Each batch is one transaction, so one commit (and on SQLite one fsync) serves
many requests. Every request gets its response only after the commit of its
batch. A full queue gets 503 at once instead of buffering without limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from mgwebhook.db.errors import describe, is_busy, translate_errors
from mgwebhook.errors import DatabaseUnavailable, ServiceOverloaded, TokenReplayed
from mgwebhook.ingest import IngestResult, VerifiedWebhook, apply_batch, apply_each

logger = logging.getLogger(__name__)

BatchResult = IngestResult | TokenReplayed | DatabaseUnavailable
RunBatch = Callable[[list[VerifiedWebhook], datetime], Awaitable[list[BatchResult]]]


@dataclass
class _Pending:
    webhook: VerifiedWebhook
    future: asyncio.Future[BatchResult]


class BatchWriter:
    """Apply queued posts in batches with `writers` concurrent transactions."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        queue_size: int,
        max_batch_size: int,
        writers: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        # Called with the size of each batch before it runs (the batch-size metric).
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(queue_size)
        self._max_batch_size = max_batch_size
        self._writers = writers
        self._tasks: list[asyncio.Task[None]] = []
        # Posts taken from the queue whose batch has not committed yet.
        self.in_flight = 0

    @property
    def waiting(self) -> int:
        """Posts in the queue, not yet taken by a writer."""
        return self._queue.qsize()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._writers)]

    async def close(self) -> None:
        """Apply what is already queued, then stop the writers."""
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, webhook: VerifiedWebhook) -> IngestResult:
        """Queue a post and wait until its batch has committed.

        Raises TokenReplayed, DatabaseUnavailable, or ServiceOverloaded when the
        queue is full.
        """
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(webhook, future))
        except asyncio.QueueFull:
            raise ServiceOverloaded(
                f"ingest queue is full ({self._queue.maxsize} waiting posts)"
            ) from None
        # When the request is cancelled, so is the future: the post stays queued
        # and is committed all the same, and the writer skips setting its result.
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Yield to the event loop once, so that requests whose bodies have
            # already arrived are verified and join this batch.
            await asyncio.sleep(0)
            while len(batch) < self._max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.in_flight += len(batch)
            try:
                await self._apply(batch)
            finally:
                self.in_flight -= len(batch)
                for _ in batch:
                    self._queue.task_done()

    async def _apply(self, batch: list[_Pending]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        results: list[BatchResult]
        try:
            results = await self._run_batch([p.webhook for p in batch], datetime.now(UTC))
        except DatabaseUnavailable as error:
            logger.error("batch of %d posts not committed: %s", len(batch), error)
            results = [error] * len(batch)
        except Exception:
            logger.exception("batch of %d posts failed unexpectedly", len(batch))
            results = [DatabaseUnavailable("batch failed unexpectedly")] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)


class AsyncBatchRunner:
    """Run each batch in one transaction on the async engine (PostgreSQL).

    Connections are kept between batches instead of going back to the pool,
    which skips the pool's pre-ping: one round trip per batch. A kept
    connection that was lost fails its batch with a disconnect error, and
    the batch then runs once more on a new connection from the pool, so its
    posts do not fail. A command timeout fails the batch with 503 and drops
    its connection, without running the batch again. A connection lost
    during the commit may leave the batch committed. Running it again is
    still safe: its tokens are then known with the same content, and each
    post gets 200 as a retry.

    A batch that fails otherwise is rolled back and applied again post by
    post, each post in a savepoint, so one bad post does not fail its
    neighbours.
    """

    def __init__(self, engine: AsyncEngine, *, keep: int) -> None:
        self._engine = engine
        # Connections idle between batches. A writer task takes one for each batch.
        self._idle: list[AsyncConnection] = []
        # Maximum number of connections kept between batches. Others go back to
        # the pool after their batch, so health checks and other queries find one.
        self._keep = keep

    async def __call__(self, webhooks: list[VerifiedWebhook], now: datetime) -> list[BatchResult]:
        async with translate_errors():
            reused = self._idle.pop() if self._idle else None
            if reused is not None:
                try:
                    return await self._apply_and_keep(reused, webhooks, now)
                except DBAPIError as error:
                    if not error.connection_invalidated:
                        raise
                    logger.warning(
                        "database connection lost (%s); applying the batch of %d posts "
                        "again on a new connection",
                        describe(error),
                        len(webhooks),
                    )
            return await self._apply_and_keep(await self._engine.connect(), webhooks, now)

    async def close(self) -> None:
        """Return the kept connections to the engine's pool."""
        while self._idle:
            await self._idle.pop().close()

    async def _apply_and_keep(
        self, connection: AsyncConnection, webhooks: list[VerifiedWebhook], now: datetime
    ) -> list[BatchResult]:
        try:
            results = await self._apply(connection, webhooks, now)
        except BaseException:
            # Its state is unknown; the pool resets it or discards it if invalidated.
            await connection.close()
            raise
        if connection.invalidated or len(self._idle) >= self._keep:
            await connection.close()
        else:
            self._idle.append(connection)
        return results

    async def _apply(
        self, connection: AsyncConnection, webhooks: list[VerifiedWebhook], now: datetime
    ) -> list[BatchResult]:
        async with AsyncSession(bind=connection) as session:
            try:
                async with session.begin():
                    return list(await session.run_sync(apply_batch, webhooks, now))
            except Exception as error:  # noqa: BLE001 - the posts are retried one by one below
                # A connection that was lost, or timed out (the driver path then
                # discards it), fails the whole batch instead of each post.
                if connection.invalidated:
                    raise
                _log_batch_retry(len(webhooks), error)
            async with session.begin():
                return await session.run_sync(apply_each, webhooks, now)


def thread_batch_runner(engine: Engine, executor: ThreadPoolExecutor) -> RunBatch:
    """Run each batch in one worker-thread call on a synchronous engine (SQLite).

    A failed batch is retried post by post, as in `AsyncBatchRunner`.
    """

    def run_in_thread(webhooks: list[VerifiedWebhook], now: datetime) -> list[BatchResult]:
        try:
            with Session(engine) as session:
                try:
                    with session.begin():
                        return list(apply_batch(session, webhooks, now))
                except Exception as error:  # noqa: BLE001 - the posts are retried one by one below
                    # Another connection holds the write lock, so retrying one
                    # post at a time would make each post wait the busy timeout.
                    if is_busy(error):
                        raise
                    _log_batch_retry(len(webhooks), error)
                with session.begin():
                    return apply_each(session, webhooks, now)
        except (SQLAlchemyError, OSError) as error:
            raise DatabaseUnavailable(describe(error)) from error

    async def run(webhooks: list[VerifiedWebhook], now: datetime) -> list[BatchResult]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, run_in_thread, webhooks, now)

    return run


def _log_batch_retry(size: int, error: Exception) -> None:
    logger.warning("batch of %d posts failed (%s); applying them one by one", size, describe(error))
