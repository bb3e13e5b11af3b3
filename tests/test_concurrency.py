"""Concurrent deliveries: the replay guard and the audit trail hold across requests and apps."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mgwebhook.db.engine import create_engine
from mgwebhook.server.app import create_app
from tests.conftest import SIGNING_KEY
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    audit_rows,
    fixture,
    fresh_token,
    insert_document,
    post_json,
    signed,
    status_of,
    stored_events,
    token_count,
)


async def test_same_request_twenty_times_applies_once(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    body = signed(fixture("delivered"))
    results = await asyncio.gather(*(post_json(client, body) for _ in range(20)))
    assert results == [(200, {"ok": True})] * 20
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True)
    ]
    assert [outcome for *_, outcome in await stored_events(engine)] == ["applied"]
    assert await token_count(engine) == 1


async def test_same_event_under_twenty_tokens_audits_once(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("failed_permanent")
    bodies = [signed(data) for _ in range(20)]
    results = await asyncio.gather(*(post_json(client, body) for body in bodies))
    assert results == [(200, {"ok": True})] * 20
    assert len(await audit_rows(engine)) == 1
    outcomes = sorted(outcome for *_, outcome in await stored_events(engine))
    assert outcomes == ["applied"] + ["duplicate"] * 19
    assert await status_of(engine, "INV-1") == "FAILED"


async def test_mixed_events_at_once_end_in_highest_status(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    names = ["delivered", "failed_temporary", "failed_permanent", "complained"] * 3
    results = await asyncio.gather(*(post_json(client, signed(fixture(n))) for n in names))
    assert {status for status, _ in results} == {200}
    assert await status_of(engine, "INV-1") == "COMPLAINED"
    assert len(await audit_rows(engine)) == 4


@pytest.fixture
async def second_client(engine, settings):
    """A second app with its own engine and pool on the same database, like a second instance."""
    other_engine = create_engine(settings.database.url)
    app = create_app(settings, [SIGNING_KEY], engine=other_engine, create_tables=False)
    async with TestClient(TestServer(app)) as client:
        yield client
    await other_engine.dispose()


async def test_two_apps_share_the_replay_guard(client, second_client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    token = fresh_token()
    genuine = signed(fixture("delivered"), token=token)
    forged = {"signature": genuine["signature"], "event-data": fixture("complained")}

    results = await asyncio.gather(
        *(post_json(client, genuine) for _ in range(5)),
        *(post_json(second_client, forged) for _ in range(5)),
    )
    statuses = [status for status, _ in results]
    # Whichever content claimed the token first wins; the other is a replay.
    assert sorted(statuses) == [200] * 5 + [401] * 5
    assert statuses[:5] in ([200] * 5, [401] * 5)
    assert len(await audit_rows(engine)) == 1
    assert await token_count(engine) == 1


async def test_two_apps_audit_one_event_once(client, second_client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("complained")
    results = await asyncio.gather(
        *(post_json(client, signed(data)) for _ in range(10)),
        *(post_json(second_client, signed(data)) for _ in range(10)),
    )
    assert results == [(200, {"ok": True})] * 20
    assert len(await audit_rows(engine)) == 1
    assert await status_of(engine, "INV-1") == "COMPLAINED"
