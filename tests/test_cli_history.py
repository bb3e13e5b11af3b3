"""`mgwebhook history`: current email_status and the audit timeline of a row."""

from __future__ import annotations

import time

import pytest

from mgwebhook import samples
from mgwebhook.tracking import track_email
from tests.event_support import cli_env, invoke, json_lines, post_data, post_event
from tests.helpers import insert_document, insert_tenant

AUDIT_FIELDS = [
    "id",
    "subject_type",
    "subject_id",
    "event_type",
    "mailgun_event",
    "mailgun_event_id",
    "message_id",
    "occurred_at",
    "recipient",
    "severity",
    "reason",
    "delivery_code",
    "status_before",
    "status_after",
    "status_changed",
    "webhook_event_id",
    "created_at",
]


@pytest.fixture
async def timeline(client, engine):
    """INV-1 with four events posted out of Mailgun's order.

    Mailgun saw: delivered (t0+10), temporary failure (t0+20), bounce (t0+30),
    complaint (t0+40). They arrive as bounce, delivered, temporary failure,
    complaint, so the delivered event and the temporary failure change nothing.
    """
    t0 = time.time() - 3600
    await track_email(engine, "document", "INV-1", "<m1@mg.example.com>")
    message_id = "m1@mg.example.com"
    await post_event(client, "failed", message_id, occurred_at=t0 + 30, event_id="bounce")
    await post_event(client, "delivered", message_id, occurred_at=t0 + 10, event_id="delivery")
    await post_event(
        client, "failed", message_id, severity="temporary", occurred_at=t0 + 20, event_id="defer"
    )
    await post_event(client, "complained", message_id, occurred_at=t0 + 40, event_id="complaint")
    return engine


async def test_history_timeline_in_mailgun_order(timeline, database_url):
    result = await invoke(["history", "INV-1"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("document INV-1: email_status COMPLAINED (updated ")
    assert lines[0].endswith("), message id m1@mg.example.com")
    assert lines[1].split() == [
        "Occurred",
        "Audit",
        "event",
        "Mailgun",
        "event",
        "Severity",
        "Reason",
        "Code",
        "Status",
        "Message",
        "id",
        "Stored",
        "event",
    ]
    # Each row: date, time, then the cells; the Status cell spans several words.
    rows = [line.split()[2:] for line in lines[3:]]
    assert rows == [
        [
            "EMAIL_DELIVERED",
            "delivered",
            "-",
            "-",
            "250",
            "FAILED",
            "(unchanged)",
            "m1@mg.example.com",
            "2",
        ],
        [
            "EMAIL_TEMP_FAILED",
            "failed",
            "temporary",
            "generic",
            "452",
            "FAILED",
            "(unchanged)",
            "m1@mg.example.com",
            "3",
        ],
        ["EMAIL_FAILED", "failed", "permanent", "bounce", "550", "SENT", "->", "FAILED"]
        + ["m1@mg.example.com", "1"],
        ["EMAIL_COMPLAINED", "complained", "-", "-", "-", "FAILED", "->", "COMPLAINED"]
        + ["m1@mg.example.com", "4"],
    ]


async def test_history_json(timeline, database_url):
    result = await invoke(["history", "INV-1", "--json"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    [record] = json_lines(result.stdout)
    assert list(record) == [
        "subject_type",
        "subject_id",
        "email_status",
        "email_status_updated_at",
        "email_message_id",
        "unmatched_events",
        "events",
    ]
    assert record["subject_type"] == "document"
    assert record["subject_id"] == "INV-1"
    assert record["email_status"] == "COMPLAINED"
    assert record["email_message_id"] == "m1@mg.example.com"
    assert record["unmatched_events"] == 0
    for event in record["events"]:
        assert list(event) == AUDIT_FIELDS
    assert [event["mailgun_event_id"] for event in record["events"]] == [
        "delivery",
        "defer",
        "bounce",
        "complaint",
    ]
    assert [event["status_changed"] for event in record["events"]] == [False, False, True, True]
    assert [event["webhook_event_id"] for event in record["events"]] == [2, 3, 1, 4]
    occurred = [event["occurred_at"] for event in record["events"]]
    assert occurred == sorted(occurred)


async def test_history_by_message_id_finds_resent_row(client, engine, database_url):
    await track_email(engine, "document", "INV-1", "<first@mg.example.com>")
    await post_event(client, "failed", "first@mg.example.com")
    # The invoice is sent again, so the row now contains the new message id.
    await track_email(engine, "document", "INV-1", "<second@mg.example.com>")
    await post_event(client, "delivered", "second@mg.example.com")
    env = cli_env(database_url)

    by_old = json_lines((await invoke(["history", "<first@mg.example.com>", "--json"], env)).stdout)
    by_new = json_lines((await invoke(["history", "second@mg.example.com", "--json"], env)).stdout)
    by_id = json_lines((await invoke(["history", "INV-1", "--json"], env)).stdout)

    assert by_old == by_new == by_id
    [record] = by_id
    assert record["email_status"] == "DELIVERED"
    assert record["email_message_id"] == "second@mg.example.com"
    assert [(event["message_id"], event["event_type"]) for event in record["events"]] == [
        ("first@mg.example.com", "EMAIL_FAILED"),
        ("second@mg.example.com", "EMAIL_DELIVERED"),
    ]


async def test_history_document_and_tenant_with_same_id(client, engine, database_url):
    await insert_document(engine, "42", "<doc@mg.example.com>")
    await insert_tenant(engine, "42", "<tenant@mg.example.com>")
    await post_event(client, "delivered", "tenant@mg.example.com")
    env = cli_env(database_url)

    both = json_lines((await invoke(["history", "42", "--json"], env)).stdout)
    assert [(r["subject_type"], r["email_status"]) for r in both] == [
        ("document", "SENT"),
        ("tenant", "DELIVERED"),
    ]

    tenant = await invoke(["history", "tenant:42"], env)
    assert tenant.exit_code == 0, tenant.output
    assert tenant.stdout.startswith("tenant 42: email_status DELIVERED (updated ")

    document = await invoke(["history", "document:42"], env)
    assert document.stdout.splitlines()[1] == "No audit events yet."


async def test_history_points_to_unmatched_events(client, engine, database_url):
    await post_data(client, samples.event_data("delivered", "late@mg.example.com"))
    env = cli_env(database_url)

    missing = await invoke(["history", "late@mg.example.com"], env)
    assert missing.exit_code == 1
    assert missing.stderr == (
        "Error: no document, tenant or message id matches 'late@mg.example.com'; 1 stored "
        "event(s) for this message id are unmatched, list them with "
        "`mgwebhook events list --message-id late@mg.example.com`\n"
    )

    # Inserted as the invoicing API does, without applying the waiting event.
    await insert_document(engine, "INV-9", "<late@mg.example.com>")
    found = await invoke(["history", "INV-9"], env)
    assert found.exit_code == 0, found.output
    assert found.stdout.splitlines()[1:] == [
        "1 stored event(s) for this message id are unmatched; apply them with "
        "`mgwebhook events replay --outcome unmatched`",
        "No audit events yet.",
    ]


@pytest.mark.parametrize(
    ("target", "exit_code", "message"),
    [
        ("INV-404", 1, "Error: no document, tenant or message id matches 'INV-404'"),
        ("document:INV-404", 1, "no document, tenant or message id matches 'document:INV-404'"),
        ("document:", 2, "'document:' has no id after document:"),
    ],
)
async def test_history_unknown_target(engine, database_url, target, exit_code, message):
    result = await invoke(["history", target], cli_env(database_url))

    assert result.exit_code == exit_code
    assert message in " ".join(result.output.replace("│", " ").split())
