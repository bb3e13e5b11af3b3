"""Hand-written minimal receivers, measured beside mgwebhook as points of reference.

Each one does the core work of a webhook on mgwebhook's schema: it checks the
HMAC, claims the token (the replay guard), finds the document by its message
id, moves its status up and appends an audit row. It skips what mgwebhook
adds: the stored raw event, payload validation, the timestamp window, the
retry fingerprint (a token used again with a different event gets 200, where
mgwebhook returns 401), the tenant lookup, the bounded queue, logs and
metrics. Audit rows leave recipient, severity, reason, delivery code and the
stored event's id empty, and SQLite's foreign key checks stay off. SQLite
runs in WAL mode with synchronous=FULL, as mgwebhook does, so every 200
follows a durable commit.

Modes:

    sqlite-per-request      one transaction per request through aiosqlite
    sqlite-batched          many events per transaction in one worker-thread call
    postgresql-per-request  one transaction per request on an asyncpg pool
    postgresql-batched      many events per transaction on one asyncpg connection

Usage: python bench/reference_receivers.py MODE PORT, with
MAILGUN_WEBHOOK_SIGNING_KEY and MGWEBHOOK_DATABASE_URL set as for
`mgwebhook serve`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosqlite
import asyncpg
from aiohttp import web

# The characters mgwebhook's message id index strips, so that the lookup uses it.
STRIP = " \t\r\n<>"
RANK = {"DELIVERED": 1, "FAILED": 2, "COMPLAINED": 3}
# Audit type and the status it moves to, by Mailgun event and severity.
EFFECTS = {
    ("delivered", None): ("EMAIL_DELIVERED", "DELIVERED"),
    ("failed", "permanent"): ("EMAIL_FAILED", "FAILED"),
    ("failed", "temporary"): ("EMAIL_TEMP_FAILED", None),
    ("complained", None): ("EMAIL_COMPLAINED", "COMPLAINED"),
}
MAX_BATCH = 200
# The running writer tasks; the event loop keeps only weak references to tasks.
WRITERS: set[asyncio.Task[None]] = set()


@dataclass
class Event:
    token: str
    signed_at: datetime
    name: str
    severity: str | None
    event_id: str
    message_id: str
    occurred_at: datetime


Handler = Callable[[Event], Awaitable[None]]
# Builds a mode's handler for a database URL, registering its cleanup with the app.
HandlerFactory = Callable[[web.Application, str], Awaitable[Handler]]


def read_event(body: dict, key: bytes) -> Event | None:
    """Return the event of an authentic body, or None when its signature does not match."""
    block = body["signature"]
    expected = hmac.new(
        key, (block["timestamp"] + block["token"]).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, block["signature"]):
        return None
    data = body["event-data"]
    return Event(
        token=block["token"],
        signed_at=datetime.fromtimestamp(int(block["timestamp"]), UTC),
        name=data["event"],
        severity=data.get("severity"),
        event_id=data["id"],
        message_id=data["message"]["headers"]["message-id"].strip(STRIP),
        occurred_at=datetime.fromtimestamp(float(data["timestamp"]), UTC),
    )


def receiver(handle: Handler, key: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def receive(request: web.Request) -> web.Response:
        event = read_event(await request.json(), key)
        if event is None:
            return web.json_response({"ok": False}, status=401)
        await handle(event)
        return web.json_response({"ok": True})

    return receive


def on_cleanup(app: web.Application, close: Callable[[], Awaitable[object]]) -> None:
    async def cleanup(_app: web.Application) -> None:
        await close()

    app.on_cleanup.append(cleanup)


def audit_row(
    event: Event, row_id: str, before: str | None, stamp: Callable[[datetime], object]
) -> tuple[str | None, tuple]:
    """Return the status the event moves the row to (None when it stays) and its audit values.

    `stamp` turns a time into the value the driver binds for a timestamp column.
    """
    audit_type, target = EFFECTS[(event.name, event.severity)]
    moved = target is not None and RANK[target] > RANK.get(before or "", 0)
    after = target if moved else before
    values = (
        row_id,
        audit_type,
        event.name,
        event.event_id,
        event.message_id,
        stamp(event.occurred_at),
        before,
        after,
        moved,
        stamp(datetime.now(UTC)),
    )
    return (target if moved else None), values


# SQLite ------------------------------------------------------------------

SQLITE_CLAIM = (
    "INSERT INTO webhook_tokens (token, fingerprint, signed_at, received_at) "
    "VALUES (?, '', ?, ?) ON CONFLICT (token) DO NOTHING"
)
SQLITE_LOOKUP = (
    f"SELECT id, email_status FROM documents WHERE trim(email_message_id, '{STRIP}') = ?"
)
SQLITE_MOVE = "UPDATE documents SET email_status = ?, email_status_updated_at = ? WHERE id = ?"
SQLITE_AUDIT = (
    "INSERT INTO email_events (subject_type, subject_id, event_type, mailgun_event, "
    "mailgun_event_id, message_id, occurred_at, status_before, status_after, "
    "status_changed, created_at) VALUES ('document', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)


def sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def sqlite_time(moment: datetime) -> str:
    """Format a time as SQLAlchemy stores it in SQLite."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_connect(url: str) -> sqlite3.Connection:
    connection = sqlite3.connect(sqlite_path(url), isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


def sqlite_apply(connection: sqlite3.Connection, event: Event) -> None:
    now = sqlite_time(datetime.now(UTC))
    claimed = connection.execute(SQLITE_CLAIM, (event.token, sqlite_time(event.signed_at), now))
    if claimed.rowcount == 0:
        return
    for row_id, before in connection.execute(SQLITE_LOOKUP, (event.message_id,)).fetchall():
        after, values = audit_row(event, row_id, before, sqlite_time)
        if after is not None:
            connection.execute(SQLITE_MOVE, (after, now, row_id))
        connection.execute(SQLITE_AUDIT, values)


async def sqlite_per_request(app: web.Application, url: str) -> Handler:
    connection = await aiosqlite.connect(sqlite_path(url), isolation_level=None)
    # aiosqlite's thread keeps the process alive until the connection closes.
    on_cleanup(app, connection.close)
    await connection.execute("PRAGMA journal_mode=WAL")
    await connection.execute("PRAGMA synchronous=FULL")
    # One connection, so one transaction at a time.
    lock = asyncio.Lock()

    async def handle(event: Event) -> None:
        async with lock:
            await connection.execute("BEGIN IMMEDIATE")
            try:
                await sqlite_apply_async(connection, event)
            except BaseException:
                await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")

    return handle


async def sqlite_apply_async(connection: aiosqlite.Connection, event: Event) -> None:
    """`sqlite_apply` through aiosqlite: each statement is one hop to its thread."""
    now = sqlite_time(datetime.now(UTC))
    claimed = await connection.execute(
        SQLITE_CLAIM, (event.token, sqlite_time(event.signed_at), now)
    )
    if claimed.rowcount == 0:
        return
    rows = await (await connection.execute(SQLITE_LOOKUP, (event.message_id,))).fetchall()
    for row_id, before in rows:
        after, values = audit_row(event, row_id, before, sqlite_time)
        if after is not None:
            await connection.execute(SQLITE_MOVE, (after, now, row_id))
        await connection.execute(SQLITE_AUDIT, values)


def sqlite_apply_all(connection: sqlite3.Connection, events: list[Event]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for event in events:
            sqlite_apply(connection, event)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


async def sqlite_batched(app: web.Application, url: str) -> Handler:
    connection = sqlite_connect(url)
    thread = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()

    async def close() -> None:
        await loop.run_in_executor(thread, connection.close)
        thread.shutdown()

    on_cleanup(app, close)

    async def apply(events: list[Event]) -> None:
        await loop.run_in_executor(thread, sqlite_apply_all, connection, events)

    return batched(apply)


# PostgreSQL --------------------------------------------------------------

POSTGRES_CLAIM = (
    "INSERT INTO webhook_tokens (token, fingerprint, signed_at, received_at) "
    "VALUES ($1, '', $2, $3) ON CONFLICT (token) DO NOTHING RETURNING token"
)
POSTGRES_LOOKUP = (
    f"SELECT id, email_status FROM documents WHERE trim(email_message_id, '{STRIP}') = $1 "
    "FOR UPDATE"
)
POSTGRES_MOVE = "UPDATE documents SET email_status = $1, email_status_updated_at = $2 WHERE id = $3"
POSTGRES_AUDIT = (
    "INSERT INTO email_events (subject_type, subject_id, event_type, mailgun_event, "
    "mailgun_event_id, message_id, occurred_at, status_before, status_after, "
    "status_changed, created_at) VALUES ('document', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
    "ON CONFLICT DO NOTHING"
)


def postgres_dsn(url: str) -> str:
    """Return the asyncpg form of a SQLAlchemy PostgreSQL URL."""
    return "postgresql://" + url.split("://", 1)[1]


async def postgres_apply(connection: asyncpg.Connection, event: Event) -> None:
    now = datetime.now(UTC)
    if await connection.fetchval(POSTGRES_CLAIM, event.token, event.signed_at, now) is None:
        return
    for row_id, before in await connection.fetch(POSTGRES_LOOKUP, event.message_id):
        after, values = audit_row(event, row_id, before, lambda moment: moment)
        if after is not None:
            await connection.execute(POSTGRES_MOVE, after, now, row_id)
        await connection.execute(POSTGRES_AUDIT, *values)


async def postgresql_per_request(app: web.Application, url: str) -> Handler:
    pool = await asyncpg.create_pool(postgres_dsn(url), min_size=10, max_size=20)
    on_cleanup(app, pool.close)

    async def handle(event: Event) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await postgres_apply(connection, event)

    return handle


async def postgresql_batched(app: web.Application, url: str) -> Handler:
    connection = await asyncpg.connect(postgres_dsn(url))
    on_cleanup(app, connection.close)

    async def apply(events: list[Event]) -> None:
        async with connection.transaction():
            for event in events:
                await postgres_apply(connection, event)

    return batched(apply)


# Group commit ------------------------------------------------------------


def batched(apply: Callable[[list[Event]], Awaitable[None]]) -> Handler:
    """Queue events for one writer that applies all waiting ones in one transaction."""
    queue: asyncio.Queue[tuple[Event, asyncio.Future[None]]] = asyncio.Queue()

    async def write() -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await apply([event for event, _ in batch])
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error
                for _, future in batch:
                    future.set_exception(error)
            else:
                for _, future in batch:
                    future.set_result(None)

    WRITERS.add(asyncio.get_running_loop().create_task(write()))

    async def handle(event: Event) -> None:
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait((event, future))
        await future

    return handle


MODES: dict[str, HandlerFactory] = {
    "sqlite-per-request": sqlite_per_request,
    "sqlite-batched": sqlite_batched,
    "postgresql-per-request": postgresql_per_request,
    "postgresql-batched": postgresql_batched,
}


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in MODES:
        sys.exit(f"usage: python bench/reference_receivers.py {{{','.join(MODES)}}} PORT")
    mode, port = sys.argv[1], int(sys.argv[2])
    key = os.environ["MAILGUN_WEBHOOK_SIGNING_KEY"].encode()
    url = os.environ["MGWEBHOOK_DATABASE_URL"]

    async def build() -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/mailgun/webhook", receiver(await MODES[mode](app, url), key))
        return app

    web.run_app(build(), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
