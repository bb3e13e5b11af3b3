"""Each row of the endpoint's outcome table, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import hdrs
from sqlalchemy import select, text

from mgwebhook.db.schema import webhook_tokens
from mgwebhook.samples import signature_block
from tests.conftest import OTHER_KEY, SIGNING_KEY
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    WEBHOOK_PATH,
    audit_rows,
    fixture,
    fresh_token,
    insert_document,
    now,
    post_form,
    post_json,
    raw_payloads,
    signed,
    signed_form,
    status_of,
    stored_events,
    token_count,
)

MESSAGE_ID = FIXTURE_MESSAGE_ID.strip("<>")


async def test_body_over_limit_is_413(make_client, engine):
    from mgwebhook.config import DatabaseSettings, ServerSettings, Settings
    from mgwebhook.server.app import create_app

    small = Settings(
        server=ServerSettings(max_body_bytes=2048),
        database=DatabaseSettings(url=str(engine.url)),
    )
    app = create_app(small, [SIGNING_KEY], engine=engine, create_tables=False)
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app)) as client:
        body = signed(fixture("delivered", padding="x" * 4096))
        response = await client.post(WEBHOOK_PATH, json=body)
        assert response.status == 413
        assert (await response.json())["ok"] is False
    assert await token_count(engine) == 0
    assert await stored_events(engine) == []


async def test_oversize_body_with_wrong_type_is_413(engine, aiohttp_client):
    from mgwebhook.config import ServerSettings, Settings
    from mgwebhook.server.app import create_app

    small = Settings(server=ServerSettings(max_body_bytes=2048))
    client = await aiohttp_client(create_app(small, [SIGNING_KEY], engine=engine))
    response = await client.post(
        WEBHOOK_PATH, data=b"x" * 5000, headers={hdrs.CONTENT_TYPE: "text/plain"}
    )
    assert response.status == 413


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text"),
        pytest.param("application/xml", id="xml"),
        pytest.param(None, id="missing"),
    ],
)
async def test_unsupported_content_type_is_415(client, engine, content_type):
    body = json.dumps(signed(fixture("delivered"))).encode()
    headers = {hdrs.CONTENT_TYPE: content_type} if content_type else {}
    response = await client.post(WEBHOOK_PATH, data=body, headers=headers)
    if content_type is None:
        # aiohttp's client labels raw bytes application/octet-stream.
        assert response.request_info.headers.get(hdrs.CONTENT_TYPE) in (
            None,
            "application/octet-stream",
        )
    assert response.status == 415
    assert (await response.json())["ok"] is False
    assert await token_count(engine) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="broken-json"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"event-data": {}}', id="no-signature"),
        pytest.param(b'{"signature": "abc", "event-data": {}}', id="signature-not-object"),
        pytest.param(
            b'{"signature": {"timestamp": "1", "token": "t"}}', id="signature-field-missing"
        ),
        pytest.param(
            b'{"signature": {"timestamp": 1, "token": 2, "signature": 3}}', id="wrong-types"
        ),
        pytest.param(b'\xff\xfe{"signature": {}}', id="invalid-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        pytest.param(b'{"a": ' + b"9" * 5000 + b"}", id="huge-number"),
    ],
)
async def test_unparsable_body_is_400(client, engine, body):
    response = await client.post(
        WEBHOOK_PATH, data=body, headers={hdrs.CONTENT_TYPE: "application/json"}
    )
    assert response.status == 400
    payload = await response.json()
    assert payload["ok"] is False
    assert isinstance(payload["error"], str)
    assert await token_count(engine) == 0


async def test_form_without_signature_fields_is_400(client, engine):
    status, body = await post_form(client, {"event": "delivered", "recipient": "a@example.com"})
    assert status == 400
    assert body["ok"] is False


async def test_wrong_key_is_401_and_logged(client, engine, caplog):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    status, body = await post_json(client, signed(fixture("delivered"), key=OTHER_KEY))
    assert status == 401
    assert body == {"ok": False, "error": "signature does not match any configured signing key"}
    assert await status_of(engine, "INV-1") == "SENT"
    assert await token_count(engine) == 0
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("signature does not match" in r.getMessage() for r in warnings)
    assert all(SIGNING_KEY.decode() not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param(lambda t: t - 12 * 3600 - 1, id="older-than-max-age"),
        pytest.param(lambda t: t + 301, id="too-far-in-future"),
        pytest.param(lambda t: f"{t}.5", id="not-an-integer"),
        pytest.param(lambda t: f" {t}", id="leading-space"),
    ],
)
async def test_stale_or_invalid_timestamp_is_401(client, engine, timestamp):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    body = signed(fixture("delivered"), timestamp=timestamp(now()))
    status, response = await post_json(client, body)
    assert status == 401
    assert response["ok"] is False
    assert await status_of(engine, "INV-1") == "SENT"
    assert await token_count(engine) == 0


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param(lambda t: t - 12 * 3600 + 60, id="eleven-hours-old-retry"),
        pytest.param(lambda t: t + 290, id="slightly-in-future"),
    ],
)
async def test_timestamp_inside_window_is_accepted(client, engine, timestamp):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    status, response = await post_json(
        client, signed(fixture("delivered"), timestamp=timestamp(now()))
    )
    assert status == 200
    assert response == {"ok": True}
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_token_reused_by_other_event_is_401(client, engine, caplog):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    token = fresh_token()
    first = signed(fixture("delivered"), token=token)
    assert (await post_json(client, first))[0] == 200

    forged = {"signature": first["signature"], "event-data": fixture("complained")}
    status, response = await post_json(client, forged)
    assert status == 401
    assert response == {"ok": False, "error": "token was already used by a different event"}
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert [row[2] for row in await audit_rows(engine)] == ["EMAIL_DELIVERED"]
    assert any("already used" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_same_event_same_token_is_200_without_effect(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    body = signed(fixture("delivered"))
    assert await post_json(client, body) == (200, {"ok": True})
    assert await post_json(client, body) == (200, {"ok": True})
    assert len(await audit_rows(engine)) == 1
    assert len(await stored_events(engine)) == 1


async def test_retry_with_reformatted_json_counts_as_same_event(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    body = signed(fixture("delivered"))
    assert await post_json(client, body) == (200, {"ok": True})
    reformatted = json.dumps(body, indent=2, sort_keys=True).encode()
    response = await client.post(
        WEBHOOK_PATH, data=reformatted, headers={hdrs.CONTENT_TYPE: "application/json"}
    )
    assert response.status == 200
    assert len(await stored_events(engine)) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-event-data"),
        pytest.param({"event-data": "delivered"}, id="event-data-string"),
        pytest.param({"event-data": {"id": "x"}}, id="no-event-name"),
        pytest.param({"event-data": {"event": "delivered"}}, id="tracked-without-message-id"),
        pytest.param(
            {"event-data": {"event": "failed", "message": {"headers": None}}},
            id="failed-with-null-headers",
        ),
    ],
)
async def test_unusable_event_data_is_406_and_kept(client, engine, body):
    body = {"signature": signature_block(SIGNING_KEY), **body}
    status, response = await post_json(client, body)
    assert status == 406
    assert response["ok"] is False
    assert await token_count(engine) == 1
    events = await stored_events(engine)
    assert [outcome for _, _, outcome in events] == ["unprocessable"]
    assert json.loads((await raw_payloads(engine))[0]) == body


async def test_route_forward_is_406_and_kept(client, engine):
    fields = signed_form(
        {
            "recipient": "billing@mg.example.com",
            "sender": "customer@example.com",
            "subject": "Re: Invoice INV-1042",
            "body-plain": "Paid, thanks. Grüße",
        }
    )
    status, response = await post_form(client, fields, multipart=True)
    assert status == 406
    assert response == {
        "ok": False,
        "error": "form post has no 'event' field; it is not an event webhook",
    }
    stored = json.loads((await raw_payloads(engine))[0])
    assert stored["body-plain"] == "Paid, thanks. Grüße"


@pytest.mark.parametrize("event", ["opened", "clicked", "accepted", "unsubscribed", "rejected"])
async def test_ignored_event_type_remembers_token_only(client, engine, event):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("opened_no_headers", event=event)
    status, response = await post_json(client, signed(data))
    assert (status, response) == (200, {"ok": True})
    assert await token_count(engine) == 1
    assert await stored_events(engine) == []
    assert await audit_rows(engine) == []
    assert await status_of(engine, "INV-1") == "SENT"


async def test_captured_opened_signature_cannot_carry_forged_complaint(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    opened = signed(fixture("opened_no_headers"))
    assert await post_json(client, opened) == (200, {"ok": True})

    forged = {"signature": opened["signature"], "event-data": fixture("complained")}
    status, _ = await post_json(client, forged)
    assert status == 401
    assert await status_of(engine, "INV-1") == "SENT"
    assert await audit_rows(engine) == []


async def test_unmatched_event_is_stored_with_raw_payload(client, engine):
    data = fixture("delivered")
    status, response = await post_json(client, signed(data))
    assert (status, response) == (200, {"ok": True})
    assert await stored_events(engine) == [("delivered", MESSAGE_ID, "unmatched")]
    assert json.loads((await raw_payloads(engine))[0])["event-data"] == data
    assert await audit_rows(engine) == []


async def test_tracked_event_applies_to_matching_row(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    assert await post_json(client, signed(fixture("delivered"))) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True)
    ]
    assert await stored_events(engine) == [("delivered", MESSAGE_ID, "applied")]


async def test_same_event_under_new_token_is_not_audited_twice(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("delivered")
    assert await post_json(client, signed(data)) == (200, {"ok": True})
    assert await post_json(client, signed(data)) == (200, {"ok": True})
    assert len(await audit_rows(engine)) == 1
    assert await stored_events(engine) == [
        ("delivered", MESSAGE_ID, "applied"),
        ("delivered", MESSAGE_ID, "duplicate"),
    ]
    assert await token_count(engine) == 2


async def test_database_failure_is_503_and_token_stays_unused(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    # Renaming the audit table makes the transaction fail after the token insert.
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE email_events RENAME TO email_events_moved"))
    body = signed(fixture("delivered"))
    response = await client.post(WEBHOOK_PATH, json=body)
    assert response.status == 503
    assert response.headers[hdrs.RETRY_AFTER] == "30"
    assert (await response.json()) == {"ok": False, "error": "database unavailable; retry later"}
    assert await token_count(engine) == 0
    assert await status_of(engine, "INV-1") == "SENT"

    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE email_events_moved RENAME TO email_events"))
    assert await post_json(client, body) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_unreachable_database_is_503(aiohttp_client, settings):
    from mgwebhook.config import DatabaseSettings, Settings
    from mgwebhook.server.app import create_app

    # Nothing listens on port 9 (discard) of 127.0.0.1 here.
    unreachable = Settings(
        database=DatabaseSettings(url="postgresql+asyncpg://postgres@127.0.0.1:9/test")
    )
    client = await aiohttp_client(create_app(unreachable, [SIGNING_KEY]))
    response = await client.post(WEBHOOK_PATH, json=signed(fixture("delivered")))
    assert response.status == 503
    assert response.headers[hdrs.RETRY_AFTER] == "30"
    assert (await response.json())["ok"] is False


async def test_token_row_records_fingerprint(client, engine):
    body = signed(fixture("delivered"))
    await post_json(client, body)
    async with engine.connect() as connection:
        token = await connection.scalar(select(webhook_tokens.c.token))
    assert token == body["signature"]["token"]


async def test_any_configured_key_is_accepted(make_client, engine):
    client = await make_client(keys=[OTHER_KEY, SIGNING_KEY])
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    assert await post_json(client, signed(fixture("delivered"))) == (200, {"ok": True})


async def test_parent_signature_is_accepted(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    parent = signature_block(SIGNING_KEY)
    block = signature_block(OTHER_KEY, timestamp=parent["timestamp"], token=parent["token"])
    block["parent-signature"] = parent["signature"]
    body: dict[str, Any] = {"signature": block, "event-data": fixture("delivered")}
    assert await post_json(client, body) == (200, {"ok": True})


async def test_parent_signature_from_unknown_key_is_401(client, engine):
    block = signature_block(OTHER_KEY)
    block["parent-signature"] = signature_block(b"third-key", token=block["token"])["signature"]
    status, _ = await post_json(client, {"signature": block, "event-data": fixture("delivered")})
    assert status == 401
