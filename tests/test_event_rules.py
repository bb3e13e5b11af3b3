"""The event rules and the status order, over HTTP with captured payloads."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from mgwebhook.db.schema import documents, email_events, tenants
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    audit_rows,
    fixture,
    insert_document,
    insert_tenant,
    now,
    post_form,
    post_json,
    signed,
    signed_form,
    status_of,
    stored_events,
)

MESSAGE_ID = FIXTURE_MESSAGE_ID.strip("<>")


@pytest.mark.parametrize(
    ("name", "audit_type", "status"),
    [
        pytest.param("delivered", "EMAIL_DELIVERED", "DELIVERED", id="delivered"),
        pytest.param("failed_permanent", "EMAIL_FAILED", "FAILED", id="failed-permanent"),
        pytest.param("failed_temporary", "EMAIL_TEMP_FAILED", "SENT", id="failed-temporary"),
        pytest.param("failed_suppressed", "EMAIL_FAILED", "FAILED", id="suppressed-605"),
        pytest.param("complained", "EMAIL_COMPLAINED", "COMPLAINED", id="complained"),
    ],
)
async def test_json_event_rule(client, engine, name, audit_type, status):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    assert await post_json(client, signed(fixture(name))) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == status
    assert await audit_rows(engine) == [
        ("document", "INV-1", audit_type, "SENT", status, status != "SENT")
    ]


@pytest.mark.parametrize(
    ("name", "audit_type", "status"),
    [
        pytest.param("legacy_delivered", "EMAIL_DELIVERED", "DELIVERED", id="delivered"),
        pytest.param("legacy_bounced", "EMAIL_FAILED", "FAILED", id="bounced"),
        pytest.param("legacy_dropped", "EMAIL_FAILED", "FAILED", id="dropped"),
    ],
)
@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
async def test_legacy_form_event_rule(client, engine, name, audit_type, status, multipart):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    status_code, body = await post_form(client, signed_form(fixture(name)), multipart=multipart)
    assert (status_code, body) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == status
    assert await audit_rows(engine) == [("document", "INV-1", audit_type, "SENT", status, True)]


async def test_legacy_repeated_field_uses_last_value(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    good = signed_form(fixture("legacy_delivered"))
    pairs = [("signature", "0" * 64), ("token", "stale-token"), *good.items()]
    status, body = await post_form(client, pairs)
    assert (status, body) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_legacy_event_under_new_token_is_not_audited_twice(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    fields = fixture("legacy_bounced")
    timestamp = now()
    assert (await post_form(client, signed_form(fields, timestamp=timestamp)))[0] == 200
    assert (await post_form(client, signed_form(fields, timestamp=timestamp)))[0] == 200
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_FAILED", "SENT", "FAILED", True)
    ]
    assert [outcome for _, _, outcome in await stored_events(engine)] == ["applied", "duplicate"]


@pytest.mark.parametrize(
    ("sequence", "final", "changed"),
    [
        pytest.param(
            [("failed_permanent", 200.0), ("delivered", 100.0)],
            "FAILED",
            [True, False],
            id="failed-then-older-delivered",
        ),
        pytest.param(
            [("delivered", 100.0), ("failed_permanent", 5000.0)],
            "FAILED",
            [True, True],
            id="delivered-then-delayed-bounce",
        ),
        pytest.param(
            [("failed_temporary", 100.0), ("delivered", 200.0)],
            "DELIVERED",
            [False, True],
            id="temporary-failure-then-delivered",
        ),
        pytest.param(
            [("complained", 300.0), ("delivered", 100.0)],
            "COMPLAINED",
            [True, False],
            id="complained-then-retried-delivered",
        ),
        pytest.param(
            [("complained", 300.0), ("failed_permanent", 200.0)],
            "COMPLAINED",
            [True, False],
            id="complained-then-failed",
        ),
    ],
)
async def test_out_of_order_sequence(client, engine, sequence, final, changed):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    for name, offset in sequence:
        data = fixture(name, timestamp=1_700_000_000.0 + offset)
        assert await post_json(client, signed(data)) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == final
    assert [row[5] for row in await audit_rows(engine)] == changed


async def test_every_arrival_order_ends_in_same_status(client, engine):
    names = ["delivered", "failed_temporary", "failed_permanent", "complained"]
    orders = [names, list(reversed(names)), [names[2], names[0], names[3], names[1]]]
    for index, order in enumerate(orders):
        message_id = f"<order-{index}@mg.example.com>"
        await insert_document(engine, f"INV-{index}", message_id)
        for name in order:
            data = fixture(name)
            data["message"]["headers"]["message-id"] = message_id.strip("<>")
            assert (await post_json(client, signed(data)))[0] == 200
    for index in range(len(orders)):
        assert await status_of(engine, f"INV-{index}") == "COMPLAINED"


@pytest.mark.parametrize("existing", ["QUEUED", None])
async def test_unknown_or_missing_status_ranks_like_sent(client, engine, existing):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID, status=existing)
    assert (await post_json(client, signed(fixture("delivered"))))[0] == 200
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", existing, "DELIVERED", True)
    ]


async def test_every_matching_row_gets_the_event(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    await insert_document(engine, "INV-2", f"  {FIXTURE_MESSAGE_ID} ")
    await insert_tenant(engine, "T-1", MESSAGE_ID)
    assert (await post_json(client, signed(fixture("complained"))))[0] == 200
    assert await status_of(engine, "INV-1") == "COMPLAINED"
    assert await status_of(engine, "INV-2") == "COMPLAINED"
    assert await status_of(engine, "T-1", tenants) == "COMPLAINED"
    assert sorted((row[0], row[1]) for row in await audit_rows(engine)) == [
        ("document", "INV-1"),
        ("document", "INV-2"),
        ("tenant", "T-1"),
    ]


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(MESSAGE_ID, id="bare"),
        pytest.param(f"<{MESSAGE_ID}>", id="brackets"),
        pytest.param(f"  <{MESSAGE_ID}>\n", id="brackets-and-whitespace"),
    ],
)
@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(MESSAGE_ID, id="stored-bare"),
        pytest.param(f" <{MESSAGE_ID}> ", id="stored-brackets"),
    ],
)
async def test_message_ids_match_without_brackets(client, engine, incoming, stored):
    await insert_document(engine, "INV-1", stored)
    data = fixture("delivered")
    data["message"]["headers"]["message-id"] = incoming
    assert (await post_json(client, signed(data)))[0] == 200
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_audit_row_records_mailgun_fields(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("failed_permanent")
    assert (await post_json(client, signed(data)))[0] == 200
    async with engine.connect() as connection:
        row = (await connection.execute(select(email_events))).one()
    assert row.mailgun_event == "failed"
    assert row.mailgun_event_id == "G9Bn5sl1TC6nu79C8C0bwg"
    assert row.message_id == MESSAGE_ID
    assert row.recipient == "alice@example.com"
    assert row.severity == "permanent"
    assert row.reason == "bounce"
    assert row.delivery_code == 550
    assert row.occurred_at.timestamp() == pytest.approx(1521233195.375624, abs=1e-3)


@pytest.mark.parametrize(
    ("changes", "severity", "status"),
    [
        pytest.param({"reason": "bounce"}, "permanent", "FAILED", id="bounce"),
        pytest.param({"reason": "suppress-unsubscribe"}, "permanent", "FAILED", id="suppress"),
        pytest.param({"reason": "generic", "code": 550}, "permanent", "FAILED", id="code-550"),
        pytest.param({"reason": "generic", "code": 421}, "temporary", "SENT", id="code-421"),
        pytest.param({"reason": None, "code": None}, "temporary", "SENT", id="no-evidence"),
    ],
)
async def test_failed_without_severity_is_classified(
    client, engine, caplog, changes, severity, status
):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("failed_permanent")
    del data["severity"]
    data["reason"] = changes["reason"]
    data["delivery-status"] = {"code": changes.get("code")} if changes.get("code") else None
    assert (await post_json(client, signed(data)))[0] == 200
    assert await status_of(engine, "INV-1") == status
    async with engine.connect() as connection:
        assert await connection.scalar(select(email_events.c.severity)) == severity
    assert any(
        "classified as" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    )


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d.pop("recipient"), id="no-recipient"),
        pytest.param(lambda d: d.update({"delivery-status": None}), id="delivery-status-null"),
        pytest.param(lambda d: d.update({"user-variables": ["a", 1]}), id="user-variables-list"),
        pytest.param(lambda d: d.update({"user-variables": "text"}), id="user-variables-string"),
        pytest.param(lambda d: d.update({"timestamp": "yesterday"}), id="timestamp-text"),
        pytest.param(lambda d: d.update({"timestamp": 1e300}), id="timestamp-huge"),
        pytest.param(lambda d: d.update({"id": None}), id="no-event-id"),
        pytest.param(lambda d: d.update({"recipient": "用户@例子.公司"}), id="non-ascii-recipient"),
        pytest.param(
            lambda d: d["message"]["headers"].update({"subject": "Rechnung – ñ ☃"}),
            id="non-ascii-subject",
        ),
        pytest.param(lambda d: d.update({"delivery-status": {"code": "5.1.1"}}), id="code-text"),
        pytest.param(lambda d: d.update({"recipient": "a\x00b@example.com"}), id="nul-recipient"),
        pytest.param(lambda d: d.update({"severity": "x" * 5000}), id="long-severity"),
        pytest.param(lambda d: d.update({"reason": "\x00" * 10}), id="nul-reason"),
        pytest.param(lambda d: d.update({"id": "y" * 5000}), id="long-event-id"),
    ],
)
async def test_odd_fields_never_fail(client, engine, mutate):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    data = fixture("delivered")
    mutate(data)
    assert await post_json(client, signed(data)) == (200, {"ok": True})
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_opened_without_message_is_ignored(client, engine):
    assert await post_json(client, signed(fixture("opened_no_headers"))) == (200, {"ok": True})
    assert await stored_events(engine) == []


async def test_non_ascii_message_id_round_trips(client, engine):
    message_id = "<rechnung-ñ-☃@mg.example.com>"
    await insert_document(engine, "INV-ü", message_id)
    data = fixture("delivered")
    data["message"]["headers"]["message-id"] = message_id.strip("<>")
    assert (await post_json(client, signed(data)))[0] == 200
    assert await status_of(engine, "INV-ü") == "DELIVERED"


async def test_literal_sql_characters_in_message_id(client, engine):
    message_id = "<a'b%c_d\"e;--@mg.example.com>"
    await insert_document(engine, "INV-1", message_id)
    await insert_document(engine, "INV-2", '<aXb%c_d"e;--@mg.example.com>')
    data = fixture("delivered")
    data["message"]["headers"]["message-id"] = message_id
    assert (await post_json(client, signed(data)))[0] == 200
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await status_of(engine, "INV-2") == "SENT"


async def test_status_timestamp_is_set(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    await post_json(client, signed(fixture("delivered")))
    async with engine.connect() as connection:
        updated = await connection.scalar(select(documents.c.email_status_updated_at))
    assert updated is not None


def test_fixtures_are_valid_json():
    from tests.helpers import FIXTURES

    for path in FIXTURES.glob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path.name
