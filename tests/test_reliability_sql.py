"""Message ids, recipients and filters are stored and searched literally.

Quotes, `%`, `_`, backslashes and SQL fragments match only themselves, and
decoy rows that a LIKE pattern or string-built SQL would also match stay
untouched. NUL cannot be stored in PostgreSQL text, so it is stored as U+FFFD
on both databases.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from mgwebhook.cli.app import app as cli_app
from mgwebhook.db import event_queries
from mgwebhook.db.engine import session_factory
from mgwebhook.db.event_queries import EventFilter
from mgwebhook.db.schema import email_events, webhook_events
from mgwebhook.tracking import track_email
from tests.helpers import fixture as load_fixture
from tests.helpers import post_json, signed, status_of, stored_events

# (document id, message id as the invoicing API stores it, message id once stored)
LITERAL_IDS = [
    ("QUOTE", "<o'brien@mg.example.com>", "o'brien@mg.example.com"),
    ("DOUBLE-QUOTE", '<say"hi"@mg.example.com>', 'say"hi"@mg.example.com'),
    ("PERCENT", "<100%@mg.example.com>", "100%@mg.example.com"),
    ("UNDERSCORE", "<a_b@mg.example.com>", "a_b@mg.example.com"),
    ("WILDCARDS", "<%_%@mg.example.com>", "%_%@mg.example.com"),
    ("BACKSLASH", "<back\\slash@mg.example.com>", "back\\slash@mg.example.com"),
    ("INJECTION", "<x'); DROP TABLE documents; --@mg>", "x'); DROP TABLE documents; --@mg"),
    ("NUL", "<nul\x00byte@mg.example.com>", "nul\ufffdbyte@mg.example.com"),
    ("UNICODE", "<caf\u00e9-\u2713@mg.example.com>", "caf\u00e9-\u2713@mg.example.com"),
    # RFC 5322 limits a header line to 998 characters, so no Message-Id header is longer.
    ("LONG", "<" + "l" * 980 + "@mg.example.com>", "l" * 980 + "@mg.example.com"),
]
# Rows whose ids a pattern or an unescaped string above would also match.
DECOYS = [
    ("DECOY-PERCENT", "<100X@mg.example.com>"),
    ("DECOY-UNDERSCORE", "<aXb@mg.example.com>"),
    ("DECOY-WILDCARDS", "<anything@mg.example.com>"),
    ("DECOY-BACKSLASH", "<backslash@mg.example.com>"),
    ("DECOY-NUL", "<nul@mg.example.com>"),
]
RECIPIENTS = {
    "QUOTE": "o'brien@example.com",
    "PERCENT": "100%off@example.com",
    "UNDERSCORE": "a_b@example.com",
    "WILDCARDS": "%_%@example.com",
    "BACKSLASH": "slash/and\\back@example.com",
    "NUL": "nul\x00@example.com",
    "LONG": "r" * 5000 + "@example.com",
}
DECOY_RECIPIENTS = {
    "DECOY-PERCENT": "100Xoff@example.com",
    "DECOY-UNDERSCORE": "aXb@example.com",
    "DECOY-WILDCARDS": "xyz@example.com",
    "DECOY-BACKSLASH": "slashandback@example.com",
}

runner = CliRunner()


async def invoke(arguments: list[str], database_url: str):
    env = {"MGWEBHOOK_DATABASE_URL": database_url, "COLUMNS": "300", "MGWEBHOOK_CONFIG": None}
    return await asyncio.to_thread(runner.invoke, cli_app, arguments, env=env)


def event_for(message_id: str, event: str, recipient: str | None) -> dict[str, object]:
    data = load_fixture("delivered" if event == "delivered" else "failed_permanent")
    data["id"] = secrets.token_hex(8)
    data["message"]["headers"]["message-id"] = message_id
    if recipient is not None:
        data["recipient"] = recipient
    return data


@pytest.fixture
async def seeded(client, engine):
    """Track every row, then post delivered to the literal ids and failed to the decoys."""
    for document_id, message_id, _ in LITERAL_IDS:
        await track_email(engine, "document", document_id, message_id)
    for document_id, message_id in DECOYS:
        await track_email(engine, "document", document_id, message_id)

    for document_id, message_id, _ in LITERAL_IDS:
        body = signed(event_for(message_id, "delivered", RECIPIENTS.get(document_id)))
        assert await post_json(client, body) == (200, {"ok": True}), document_id
    for document_id, message_id in DECOYS:
        body = signed(event_for(message_id, "failed", DECOY_RECIPIENTS.get(document_id)))
        assert await post_json(client, body) == (200, {"ok": True}), document_id


async def test_events_apply_to_the_literal_row_only(seeded, engine):
    for document_id, _, _ in LITERAL_IDS:
        assert await status_of(engine, document_id) == "DELIVERED", document_id
    for document_id, _ in DECOYS:
        assert await status_of(engine, document_id) == "FAILED", document_id

    async with engine.connect() as connection:
        audited = {
            row.subject_id: (row.message_id, row.event_type)
            for row in await connection.execute(select(email_events))
        }
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    for document_id, _, stored in LITERAL_IDS:
        assert audited[document_id] == (stored, "EMAIL_DELIVERED"), document_id
    assert "documents" in tables


async def test_stored_values_are_literal(seeded, engine):
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(webhook_events.c.message_id, webhook_events.c.recipient)
            )
        ).all()
    stored = dict(rows)
    for document_id, _, message_id in LITERAL_IDS:
        expected = RECIPIENTS.get(document_id, "alice@example.com").replace("\x00", "\ufffd")
        assert stored[message_id] == expected, document_id


@pytest.mark.parametrize(("document_id", "tracked_as", "stored"), LITERAL_IDS)
async def test_message_id_filter_is_literal(seeded, engine, document_id, tracked_as, stored):
    async with session_factory(engine)() as session:
        rows = await event_queries.list_events(session, EventFilter(message_id=stored), 100)
    assert [row.message_id for row in rows] == [stored], document_id


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        pytest.param("'", {"o'brien@example.com"}, id="quote"),
        pytest.param("%", {"100%off@example.com", "%_%@example.com"}, id="percent"),
        pytest.param("_", {"a_b@example.com", "%_%@example.com"}, id="underscore"),
        pytest.param("%_%", {"%_%@example.com"}, id="wildcards"),
        pytest.param("/", {"slash/and\\back@example.com"}, id="escape-character"),
        pytest.param("\\", {"slash/and\\back@example.com"}, id="backslash"),
        pytest.param("O'BRIEN", {"o'brien@example.com"}, id="other-case"),
        pytest.param("\ufffd", {"nul\ufffd@example.com"}, id="replaced-nul"),
        pytest.param("r" * 4000, {"r" * 5000 + "@example.com"}, id="long"),
    ],
)
async def test_recipient_filter_is_literal(seeded, engine, search, expected):
    async with session_factory(engine)() as session:
        rows = await event_queries.list_events(session, EventFilter(recipient=search), 100)
    assert {row.recipient for row in rows} == expected


@pytest.mark.parametrize(
    ("arguments", "expected_message_ids"),
    [
        pytest.param(["--message-id", "<100%@mg.example.com>"], {"100%@mg.example.com"}, id="id"),
        pytest.param(
            ["--message-id", "x'); DROP TABLE documents; --@mg"],
            {"x'); DROP TABLE documents; --@mg"},
            id="injection",
        ),
        pytest.param(["--recipient", "%_%"], {"%_%@mg.example.com"}, id="recipient-wildcards"),
        pytest.param(["--subject", "document:UNDERSCORE"], {"a_b@mg.example.com"}, id="subject"),
    ],
)
async def test_events_list_command_is_literal(
    seeded, database_url, arguments, expected_message_ids
):
    result = await invoke(["events", "list", "--json", *arguments], database_url)
    assert result.exit_code == 0, result.output
    listed = {json.loads(line)["message_id"] for line in result.stdout.splitlines()}
    assert listed == expected_message_ids


async def test_history_command_finds_quoted_id(seeded, database_url):
    result = await invoke(["history", "o'brien@mg.example.com"], database_url)
    assert result.exit_code == 0, result.output
    assert "document QUOTE: email_status DELIVERED" in result.stdout
    assert "DECOY" not in result.stdout


async def test_tracked_id_with_nul_matches(client, engine):
    await track_email(engine, "document", "INV-NUL", "<a\x00b@mg.example.com>")
    body = signed(event_for("a\x00b@mg.example.com", "delivered", None))
    assert await post_json(client, body) == (200, {"ok": True})
    assert await status_of(engine, "INV-NUL") == "DELIVERED"


async def test_message_id_past_header_limit_is_406_and_kept(client, engine):
    """A message id longer than a header line may be (998 characters) is unusable, not a 503.

    Stored as an index entry it would pass PostgreSQL's btree limit (2704 bytes)
    and fail the transaction on every retry.
    """
    # Random hex does not compress, so an index entry would keep its full size.
    message_id = secrets.token_hex(1600) + "@mg.example.com"
    body = signed(event_for(message_id, "delivered", None))
    assert await post_json(client, body) == (
        406,
        {
            "ok": False,
            "error": "message id is 3215 characters long; no real message id is longer than 998",
        },
    )
    assert [outcome for *_, outcome in await stored_events(engine)] == ["unprocessable"]


async def test_long_event_id_is_stored_as_hash(client, engine):
    await track_email(engine, "document", "INV-LONG", "<long@mg.example.com>")
    data = event_for("long@mg.example.com", "delivered", None)
    data["id"] = secrets.token_hex(2000)
    assert await post_json(client, signed(data)) == (200, {"ok": True})
    assert await post_json(client, signed(data)) == (200, {"ok": True})
    assert [outcome for *_, outcome in await stored_events(engine)] == ["applied", "duplicate"]
