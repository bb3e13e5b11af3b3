"""The set-based statements as run on the driver's connection: values and errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db import batch
from mgwebhook.db.batch import TokenUse
from mgwebhook.db.engine import session_factory
from mgwebhook.db.repository import as_utc
from mgwebhook.db.schema import webhook_events

RECEIVED = datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=UTC)
SECRET_REASON = "reason-that-must-not-reach-the-error-text"


def event_row(token: str, index: int) -> dict:
    return {
        "received_at": RECEIVED,
        "token": token,
        "payload_format": "json",
        "raw_payload": "{}",
        "event": "delivered",
        "mailgun_event_id": f"event-{index}",
        "message_id": f"message-{index}@example.com",
        "recipient": None,
        "severity": None,
        "reason": None,
        "delivery_code": index,
        "occurred_at": None,
        "outcome": "applied",
        "detail": "",
        "processed_at": RECEIVED,
    }


def audit_row(webhook_event_id: int) -> dict:
    return {
        "subject_type": "document",
        "subject_id": "INV-1",
        "event_type": "EMAIL_DELIVERED",
        "mailgun_event": "delivered",
        "mailgun_event_id": "event-1",
        "message_id": "message-1@example.com",
        "occurred_at": RECEIVED,
        "recipient": None,
        "severity": None,
        "reason": SECRET_REASON,
        "delivery_code": 250,
        "status_before": "SENT",
        "status_after": "DELIVERED",
        "status_changed": True,
        "webhook_event_id": webhook_event_id,
        "created_at": RECEIVED,
    }


async def test_inserted_rows_read_back(engine: AsyncEngine):
    rows = [event_row(f"token-{index}", index) for index in range(3)]
    async with session_factory(engine)() as session, session.begin():
        ids = await session.run_sync(batch.insert_webhook_events, rows)

    assert sorted(ids) == ["token-0", "token-1", "token-2"]
    async with engine.connect() as connection:
        result = await connection.execute(
            select(
                webhook_events.c.id,
                webhook_events.c.token,
                webhook_events.c.received_at,
                webhook_events.c.delivery_code,
                webhook_events.c.occurred_at,
            ).order_by(webhook_events.c.id)
        )
        # SQLite stores timestamps without their zone, all in UTC.
        stored = [(id_, token, as_utc(at), code, on) for id_, token, at, code, on in result]
    assert stored == [
        (ids["token-0"], "token-0", RECEIVED, 0, None),
        (ids["token-1"], "token-1", RECEIVED, 1, None),
        (ids["token-2"], "token-2", RECEIVED, 2, None),
    ]


async def test_driver_error_as_sqlalchemy_error(engine: AsyncEngine):
    async with session_factory(engine)() as session, session.begin():
        with pytest.raises(IntegrityError) as raised:
            await session.run_sync(batch.insert_audit_events, [audit_row(999_999)])
        await session.rollback()

    assert "FOREIGN KEY" in str(raised.value.orig).upper()
    assert SECRET_REASON not in str(raised.value)


async def test_long_lists_span_several_statements(engine: AsyncEngine):
    # 200 rows: SQLite inserts them as chunks of 128, 64 and 8 rows.
    rows = [event_row(f"token-{index:03}", index) for index in range(200)]
    uses = [TokenUse(f"token-{index:03}", "fingerprint", RECEIVED) for index in range(150)]
    async with session_factory(engine)() as session, session.begin():
        ids = await session.run_sync(batch.insert_webhook_events, rows)
        first = await session.run_sync(batch.claim_tokens, uses, RECEIVED)
        again = await session.run_sync(batch.claim_tokens, uses[:140], RECEIVED)

    assert len(ids) == 200
    assert len(set(ids.values())) == 200
    assert first == dict.fromkeys((use.token for use in uses), None)
    assert again == {use.token: "fingerprint" for use in uses[:140]}


def test_chunks_cover_every_value_once():
    values = list(range(200))
    assert [len(chunk) for chunk in batch._chunks(values)] == [128, 64, 8]
    assert sum(batch._chunks(values), []) == values
    assert [len(part) for part in batch._in_lists(values)] == [128, 128]
    assert next(batch._in_lists(list(range(17)))) == list(range(17)) + [16] * 15
