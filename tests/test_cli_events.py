"""`mgwebhook events list` and `events show` against real databases seeded over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from mgwebhook import samples
from mgwebhook.db.schema import webhook_events
from mgwebhook.tracking import track_email
from tests.event_support import (
    cli_env,
    invoke,
    json_lines,
    post_data,
    post_event,
    set_received_at,
    table_rows,
)

# Recipient with a quote and both LIKE wildcards, to check that filters match literally.
ODD_RECIPIENT = "o'brien%_x@example.com"

EVENT_FIELDS = [
    "id",
    "received_at",
    "occurred_at",
    "event",
    "severity",
    "reason",
    "delivery_code",
    "message_id",
    "recipient",
    "mailgun_event_id",
    "payload_format",
    "outcome",
    "detail",
    "processed_at",
    "subjects",
    "payload_pruned",
]


@pytest.fixture
async def seeded(client, engine):
    """Five stored events, one per outcome that is stored, with ids 1 to 5.

    1 delivered m1 applied, 2 failed m2 unmatched (odd recipient),
    3 complained m1 applied, 4 delivered m1 again duplicate, 5 delivered without
    message id unprocessable. INV-1 is tracked with <m1@mg.example.com>.
    """
    await track_email(engine, "document", "INV-1", "<m1@mg.example.com>")
    delivered = samples.event_data("delivered", "m1@mg.example.com", event_id="evt-delivered-1")
    await post_data(client, delivered)
    await post_event(client, "failed", "m2@mg.example.com", recipient=ODD_RECIPIENT)
    await post_event(client, "complained", "m1@mg.example.com", recipient="bob@example.com")
    await post_data(client, delivered)
    no_message_id = samples.event_data("delivered", "m3@mg.example.com")
    del no_message_id["message"]["headers"]["message-id"]
    await post_data(client, no_message_id, expected_status=406)
    return engine


async def test_list_json_fields_and_values(seeded, database_url):
    result = await invoke(["events", "list", "--json"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert [record["id"] for record in records] == [5, 4, 3, 2, 1]
    for record in records:
        assert list(record) == EVENT_FIELDS
    assert [record["outcome"] for record in records] == [
        "unprocessable",
        "duplicate",
        "applied",
        "unmatched",
        "applied",
    ]
    first = records[-1]
    assert first["event"] == "delivered"
    assert first["message_id"] == "m1@mg.example.com"
    assert first["recipient"] == "alice@example.com"
    assert first["mailgun_event_id"] == "evt-delivered-1"
    assert first["delivery_code"] == 250
    assert first["payload_format"] == "json"
    assert first["detail"] == "EMAIL_DELIVERED recorded for document:INV-1"
    assert first["subjects"] == ["document:INV-1"]
    assert first["payload_pruned"] is False
    assert datetime.fromisoformat(first["received_at"]).tzinfo is not None
    # The duplicate counts for the row that recorded the same Mailgun event.
    assert records[1]["subjects"] == ["document:INV-1"]
    assert records[3]["subjects"] == []
    assert records[3]["severity"] == "permanent"
    assert records[3]["reason"] == "bounce"
    assert records[0]["message_id"] is None
    assert records[0]["detail"] == "'delivered' event has no message id to match"


async def test_list_table_columns(seeded, database_url):
    result = await invoke(["events", "list"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == [
        "Id",
        "Received",
        "Event",
        "Severity",
        "Message",
        "id",
        "Recipient",
        "Outcome",
        "Subject",
    ]
    rows = table_rows(result.stdout)
    # Received is a date and a time, so each row has two cells for it.
    assert [row[:1] + row[3:] for row in rows] == [
        ["5", "delivered", "-", "-", "alice@example.com", "unprocessable", "-"],
        [
            "4",
            "delivered",
            "-",
            "m1@mg.example.com",
            "alice@example.com",
            "duplicate",
            "document:INV-1",
        ],
        [
            "3",
            "complained",
            "-",
            "m1@mg.example.com",
            "bob@example.com",
            "applied",
            "document:INV-1",
        ],
        ["2", "failed", "permanent", "m2@mg.example.com", ODD_RECIPIENT, "unmatched", "-"],
        [
            "1",
            "delivered",
            "-",
            "m1@mg.example.com",
            "alice@example.com",
            "applied",
            "document:INV-1",
        ],
    ]
    assert "More events match" not in result.stdout


@pytest.mark.parametrize(
    ("arguments", "expected_ids"),
    [
        (["--event", "delivered"], [5, 4, 1]),
        (["--event", "DELIVERED"], [5, 4, 1]),
        (["--outcome", "applied"], [3, 1]),
        (["--outcome", "unmatched"], [2]),
        (["--outcome", "duplicate"], [4]),
        (["--outcome", "unprocessable"], [5]),
        (["--outcome", "ignored"], []),
        (["--message-id", "<m1@mg.example.com>"], [4, 3, 1]),
        (["--message-id", "m2@mg.example.com"], [2]),
        (["--message-id", "m1@mg.example.com' OR '1'='1"], []),
        (["--subject", "document:INV-1"], [4, 3, 1]),
        (["--subject", "tenant:INV-1"], []),
        (["--subject", "document:INV-%"], []),
        (["--recipient", "BOB@"], [3]),
        (["--recipient", "o'brien%_"], [2]),
        (["--recipient", "%"], [2]),
        (["--recipient", "_"], [2]),
        # As LIKE patterns these would match alice@example.com and bob@example.com.
        (["--recipient", "a%e"], []),
        (["--recipient", "b_b"], []),
        (["--outcome", "applied", "--message-id", "m1@mg.example.com"], [3, 1]),
        (["--event", "delivered", "--outcome", "applied"], [1]),
    ],
)
async def test_list_filters(seeded, database_url, arguments, expected_ids):
    result = await invoke(["events", "list", "--json", *arguments], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert [record["id"] for record in json_lines(result.stdout)] == expected_ids


async def test_list_time_filters(seeded, database_url):
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    await set_received_at(seeded, 1, three_days_ago)
    env = cli_env(database_url)

    async def ids(*arguments: str) -> list[int]:
        result = await invoke(["events", "list", "--json", *arguments], env)
        assert result.exit_code == 0, result.output
        return [record["id"] for record in json_lines(result.stdout)]

    assert await ids("--since", "2d") == [5, 4, 3, 2]
    assert await ids("--until", "2d") == [1]
    assert await ids("--since", "1h") == [5, 4, 3, 2]
    assert await ids("--since", "4d") == [5, 4, 3, 2, 1]
    window_start = (three_days_ago - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    window_end = (three_days_ago + timedelta(hours=1)).isoformat()
    assert await ids("--since", window_start, "--until", window_end) == [1]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert await ids("--since", future) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "yesterday"], "'yesterday' is neither an ISO 8601 time"),
        (["--since", "1h", "--until", "2h"], "--since 1h is not before --until 2h"),
        (["--subject", "invoice:1"], "'invoice:1' is not a subject; use document:ID or tenant:ID"),
        (["--subject", "document:"], "use document:ID or tenant:ID"),
        (["--message-id", "<>"], "message id '<>' is empty"),
        (["--outcome", "retry"], "'retry' is not one of"),
    ],
)
async def test_list_rejects_bad_options(engine, database_url, arguments, message):
    result = await invoke(["events", "list", *arguments], cli_env(database_url))

    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


async def test_list_pages_by_before_id(client, engine, database_url):
    for number in range(5):
        await post_event(client, "delivered", f"page-{number}@mg.example.com")
    env = cli_env(database_url)

    first = await invoke(["events", "list", "--limit", "2"], env)
    assert [row[0] for row in table_rows(first.stdout)[:-1]] == ["5", "4"]
    assert first.stdout.splitlines()[-1] == (
        "More events match. Next page: repeat the command with --before-id 4"
    )

    second = await invoke(["events", "list", "--limit", "2", "--before-id", "4"], env)
    assert [row[0] for row in table_rows(second.stdout)[:-1]] == ["3", "2"]
    assert second.stdout.splitlines()[-1].endswith("--before-id 2")

    last = await invoke(["events", "list", "--limit", "2", "--before-id", "2"], env)
    assert [row[0] for row in table_rows(last.stdout)] == ["1"]
    assert "More events match" not in last.stdout

    as_json = await invoke(["events", "list", "--json", "--limit", "2", "--before-id", "4"], env)
    assert [record["id"] for record in json_lines(as_json.stdout)] == [3, 2]


async def test_list_empty_database(engine, database_url):
    result = await invoke(["events", "list"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert result.stdout == "No stored events match.\n"
    as_json = await invoke(["events", "list", "--json"], cli_env(database_url))
    assert as_json.stdout == ""


async def test_show_fields_audit_and_payload(seeded, database_url):
    result = await invoke(["events", "show", "1"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "Event delivered" in lines
    assert "Message id m1@mg.example.com" in lines
    assert "Mailgun event id evt-delivered-1" in lines
    assert "Outcome applied" in lines
    assert "Why EMAIL_DELIVERED recorded for document:INV-1" in lines
    assert "Subjects document:INV-1" in lines
    assert "Audit events recorded from this event (1):" in lines
    audit_line = next(line for line in lines if line.endswith("m1@mg.example.com 1"))
    assert audit_line.split()[2:] == [
        "EMAIL_DELIVERED",
        "delivered",
        "-",
        "-",
        "250",
        "document:INV-1",
        "SENT",
        "->",
        "DELIVERED",
        "m1@mg.example.com",
        "1",
    ]
    payload_start = result.stdout.index("Raw payload:\n") + len("Raw payload:\n")
    payload = json.loads(result.stdout[payload_start:])
    assert payload["event-data"]["id"] == "evt-delivered-1"
    assert '\n  "event-data": {\n' in result.stdout


async def test_show_event_without_audit_rows(seeded, database_url):
    result = await invoke(["events", "show", "2"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert "No audit events were recorded from this event." in result.stdout
    assert "Why no document or tenant has this message id yet" in " ".join(result.stdout.split())


async def test_show_json_prints_raw_payload_as_stored(seeded, database_url):
    result = await invoke(["events", "show", "3", "--json"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    async with seeded.connect() as connection:
        stored = await connection.scalar(
            select(webhook_events.c.raw_payload).where(webhook_events.c.id == 3)
        )
    assert result.stdout == stored + "\n"


async def test_show_unknown_id(engine, database_url):
    result = await invoke(["events", "show", "42"], cli_env(database_url))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: stored event 42 does not exist; list event ids with `mgwebhook events list`\n"
    )
