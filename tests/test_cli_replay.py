"""`mgwebhook events replay`: unmatched events applied once their row exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mgwebhook import samples
from mgwebhook.db.schema import email_events, tenants, webhook_events
from tests.event_support import (
    cli_env,
    event_outcomes,
    invoke,
    post_data,
    post_event,
    set_received_at,
    snapshot,
    table_rows,
)
from tests.helpers import audit_rows, insert_document, insert_tenant, status_of


async def test_replay_unmatched_after_row_inserted_with_sql(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    await post_event(client, "failed", "m1@mg.example.com", severity="temporary")
    await post_event(client, "delivered", "other@mg.example.com")
    assert await event_outcomes(engine) == {1: "unmatched", 2: "unmatched", 3: "unmatched"}
    # The invoicing API commits its row after Mailgun already delivered the webhooks.
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")

    result = await invoke(["events", "replay", "--outcome", "unmatched"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await event_outcomes(engine) == {1: "applied", 2: "applied", 3: "unmatched"}
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True),
        ("document", "INV-1", "EMAIL_TEMP_FAILED", "DELIVERED", "DELIVERED", False),
    ]
    assert [row[:4] for row in table_rows(result.stdout)[:2]] == [
        ["1", "delivered", "m1@mg.example.com", "unmatched"],
        ["2", "failed", "m1@mg.example.com", "unmatched"],
    ]
    assert "document:INV-1 SENT -> DELIVERED" in " ".join(result.stdout.split())
    assert result.stdout.splitlines()[-1] == (
        "Replayed 3 event(s), 2 changed; outcomes: applied 2, unmatched 1"
    )


async def test_replay_twice_changes_nothing(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    await post_event(client, "complained", "m1@mg.example.com")
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")
    await insert_tenant(engine, "T-1", "m1@mg.example.com")
    env = cli_env(database_url)

    first = await invoke(["events", "replay", "1", "2"], env)
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[-1] == ("Replayed 2 event(s), 2 changed; outcomes: applied 2")
    after_first = await snapshot(engine)
    assert await status_of(engine, "INV-1") == "COMPLAINED"
    assert len(after_first["email_events"]) == 4

    second = await invoke(["events", "replay", "1", "2"], env)
    assert second.exit_code == 0, second.output
    assert second.stdout == "Replayed 2 event(s), 0 changed; outcomes: duplicate 2\n"
    assert await snapshot(engine) == after_first

    by_outcome = await invoke(["events", "replay", "--outcome", "unmatched"], env)
    assert by_outcome.stdout == "Replayed 0 event(s), 0 changed\n"
    assert await snapshot(engine) == after_first


async def test_replay_records_new_sharing_row(client, engine, database_url):
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")
    await post_event(client, "delivered", "m1@mg.example.com")
    assert await event_outcomes(engine) == {1: "applied"}
    await insert_tenant(engine, "T-1", "<m1@mg.example.com>")

    result = await invoke(["events", "replay", "1"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert await status_of(engine, "T-1", table=tenants) == "DELIVERED"
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await event_outcomes(engine) == {1: "applied"}
    assert result.stdout.splitlines()[-1] == "Replayed 1 event(s), 1 changed; outcomes: applied 1"


async def test_dry_run_changes_nothing(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    await post_event(client, "failed", "m1@mg.example.com")
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")
    before = await snapshot(engine)

    result = await invoke(
        ["events", "replay", "--outcome", "unmatched", "--dry-run"], cli_env(database_url)
    )

    assert result.exit_code == 0, result.output
    assert await snapshot(engine) == before
    text = " ".join(result.stdout.split())
    # The second event is applied on top of what the first would have changed.
    assert "document:INV-1 SENT -> DELIVERED" in text
    assert "document:INV-1 DELIVERED -> FAILED" in text
    assert result.stdout.splitlines()[-2:] == [
        "Would replay 2 event(s), 2 changed; outcomes: applied 2",
        "Dry run: the changes were rolled back.",
    ]

    real = await invoke(["events", "replay", "--outcome", "unmatched"], cli_env(database_url))
    assert real.exit_code == 0, real.output
    assert await status_of(engine, "INV-1") == "FAILED"


async def test_replay_by_time_window(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    await post_event(client, "delivered", "m2@mg.example.com")
    await set_received_at(engine, 1, datetime.now(UTC) - timedelta(days=3))
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")
    await insert_document(engine, "INV-2", "<m2@mg.example.com>")
    env = cli_env(database_url)

    recent = await invoke(["events", "replay", "--since", "1d"], env)
    assert recent.exit_code == 0, recent.output
    assert await event_outcomes(engine) == {1: "unmatched", 2: "applied"}

    older = await invoke(["events", "replay", "--until", "2d"], env)
    assert older.exit_code == 0, older.output
    assert await event_outcomes(engine) == {1: "applied", 2: "applied"}


async def test_replay_records_unprocessable_outcome(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    # A payload that no longer parses, as if the rules had changed since it was stored.
    async with engine.begin() as connection:
        await connection.execute(webhook_events.update().values(raw_payload="{not json"))

    result = await invoke(["events", "replay", "1"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert await event_outcomes(engine) == {1: "unprocessable"}
    async with engine.connect() as connection:
        detail = await connection.scalar(select(webhook_events.c.detail))
    assert detail.startswith("body is not valid UTF-8 JSON: ")
    again = await invoke(["events", "replay", "1"], cli_env(database_url))
    assert again.stdout == "Replayed 1 event(s), 0 changed; outcomes: unprocessable 1\n"


async def test_replay_selection_errors(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    env = cli_env(database_url)

    nothing = await invoke(["events", "replay"], env)
    assert nothing.exit_code == 1
    assert nothing.stderr == (
        "Error: no events selected; pass event ids, or --outcome (usually unmatched), "
        "--since or --until\n"
    )

    both = await invoke(["events", "replay", "1", "--outcome", "unmatched"], env)
    assert both.exit_code == 1
    assert both.stderr == "Error: pass either event ids or --outcome/--since/--until, not both\n"

    missing = await invoke(["events", "replay", "1", "7", "9"], env)
    assert missing.exit_code == 1
    assert missing.stderr == (
        "Error: stored event(s) 7, 9 do not exist; list event ids with `mgwebhook events list`\n"
    )
    assert await event_outcomes(engine) == {1: "unmatched"}


async def test_track_applies_waiting_events_before_replay(client, engine, database_url):
    await post_data(client, samples.event_data("delivered", "m1@mg.example.com"))
    env = cli_env(database_url)

    tracked = await invoke(["track", "document", "INV-1", "<m1@mg.example.com>"], env)
    assert tracked.exit_code == 0, tracked.output
    assert await event_outcomes(engine) == {1: "applied"}

    result = await invoke(["events", "replay", "--outcome", "unmatched"], env)
    assert result.stdout == "Replayed 0 event(s), 0 changed\n"
    async with engine.connect() as connection:
        count = len((await connection.execute(select(email_events.c.id))).all())
    assert count == 1
