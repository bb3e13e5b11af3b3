"""`mgwebhook events prune`: retention of stored events and tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from mgwebhook import samples
from mgwebhook.db.schema import webhook_events, webhook_tokens
from mgwebhook.tracking import track_email
from tests.event_support import (
    cli_env,
    event_outcomes,
    invoke,
    json_lines,
    post_data,
    post_event,
    set_received_at,
    snapshot,
)


async def age_token(engine, webhook_event_id: int, received: timedelta, signed: timedelta) -> str:
    """Move the token of a stored event back in time; return the token."""
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        token = await connection.scalar(
            select(webhook_events.c.token).where(webhook_events.c.id == webhook_event_id)
        )
        await connection.execute(
            update(webhook_tokens)
            .where(webhook_tokens.c.token == token)
            .values(received_at=now - received, signed_at=now - signed)
        )
    return token


async def tokens(engine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.scalars(select(webhook_tokens.c.token))).all())


@pytest.fixture
async def aged(client, engine):
    """Events 1 (applied), 2 (unmatched) and 4 (duplicate of 1) received 100 days ago.

    Event 3 (applied) is recent. The tokens have the same ages as their events.
    """
    await track_email(engine, "document", "INV-1", "<m1@mg.example.com>")
    delivered = samples.event_data("delivered", "m1@mg.example.com")
    await post_data(client, delivered)
    await post_event(client, "delivered", "m2@mg.example.com")
    await post_event(client, "failed", "m1@mg.example.com")
    await post_data(client, delivered)
    assert await event_outcomes(engine) == {
        1: "applied",
        2: "unmatched",
        3: "applied",
        4: "duplicate",
    }
    old = timedelta(days=100)
    for webhook_event_id in (1, 2, 4):
        await set_received_at(engine, webhook_event_id, datetime.now(UTC) - old)
        await age_token(engine, webhook_event_id, old, old)
    return engine


async def test_prune_deletes_old_events_and_keeps_audited_ones(aged, database_url):
    before = await snapshot(aged)
    recent_token = before["webhook_events"][2][2]

    result = await invoke(["events", "prune", "--older-than", "90d"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Deleted 2 stored event(s) received before ")
    assert lines[1] == (
        "Removed the raw payload of 1 older event(s) kept because audit events point to them."
    )
    assert lines[2].startswith("Deleted 3 token(s) received and signed before ")

    assert await event_outcomes(aged) == {1: "applied", 3: "applied"}
    after = await snapshot(aged)
    # The audit trail and the rows are untouched, and still point to event 1.
    assert after["email_events"] == before["email_events"]
    assert after["documents"] == before["documents"]
    assert [row.webhook_event_id for row in after["email_events"]] == [1, 3]
    async with aged.connect() as connection:
        rows = await connection.execute(select(webhook_events.c.id, webhook_events.c.raw_payload))
        payloads = {webhook_event_id: raw_payload for webhook_event_id, raw_payload in rows}
    assert payloads[1] == ""
    assert payloads[3] == before["webhook_events"][2].raw_payload
    assert await tokens(aged) == {recent_token}

    again = await invoke(["events", "prune", "--older-than", "90d"], cli_env(database_url))
    assert again.stdout.splitlines()[0].startswith("Deleted 0 stored event(s)")
    assert await snapshot(aged) == after


async def test_pruned_event_show_list_and_replay(aged, database_url):
    env = cli_env(database_url)
    assert (await invoke(["events", "prune", "--older-than", "90d"], env)).exit_code == 0

    shown = await invoke(["events", "show", "1"], env)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[-1] == "Raw payload: removed by `mgwebhook events prune`."
    assert "Outcome applied" in " ".join(shown.stdout.split())

    raw = await invoke(["events", "show", "1", "--json"], env)
    assert raw.exit_code == 1
    assert raw.stderr == (
        "Error: stored event 1 has no raw payload: `mgwebhook events prune` removed it\n"
    )

    listed = json_lines((await invoke(["events", "list", "--json"], env)).stdout)
    assert [(record["id"], record["payload_pruned"]) for record in listed] == [
        (3, False),
        (1, True),
    ]

    before = await snapshot(aged)
    replayed = await invoke(["events", "replay", "1", "3"], env)
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.splitlines()[-1] == (
        "Replayed 2 event(s), 0 changed; outcomes: duplicate 1, skipped 1"
    )
    assert "the raw payload was removed by `mgwebhook events prune`" in replayed.stdout
    assert await snapshot(aged) == before

    # Selection by filter leaves pruned events out.
    by_outcome = await invoke(["events", "replay", "--outcome", "applied"], env)
    assert by_outcome.stdout.splitlines()[-1] == (
        "Replayed 1 event(s), 0 changed; outcomes: duplicate 1"
    )


async def test_prune_keeps_tokens_younger_than_max_age(client, engine, database_url):
    for number in range(4):
        await post_event(client, "delivered", f"m{number}@mg.example.com")
    for webhook_event_id in (1, 2, 3):
        await set_received_at(engine, webhook_event_id, datetime.now(UTC) - timedelta(hours=2))
    hours = timedelta(hours=1)
    young = await age_token(engine, 1, 2 * hours, 2 * hours)
    old = await age_token(engine, 2, 13 * hours, 13 * hours)
    # Received long ago but signed recently: its signature is still accepted.
    signed_recently = await age_token(engine, 3, 13 * hours, 2 * hours)
    current = await age_token(engine, 4, timedelta(0), timedelta(0))

    # The signature max age (12 h by default) wins over --older-than 1h for tokens.
    result = await invoke(["events", "prune", "--older-than", "1h"], cli_env(database_url))

    assert result.exit_code == 0, result.output
    assert await tokens(engine) == {young, signed_recently, current}
    assert old not in await tokens(engine)
    assert await event_outcomes(engine) == {4: "unmatched"}
    assert result.stdout.splitlines()[0].startswith("Deleted 3 stored event(s)")
    assert result.stdout.splitlines()[2].startswith("Deleted 1 token(s)")


async def test_prune_honours_configured_max_age(client, engine, database_url):
    await post_event(client, "delivered", "m1@mg.example.com")
    token = await age_token(engine, 1, timedelta(hours=2), timedelta(hours=2))
    env = cli_env(database_url, MGWEBHOOK_WEBHOOK_MAX_AGE_SECONDS="3600")

    result = await invoke(["events", "prune", "--older-than", "30m"], env)

    assert result.exit_code == 0, result.output
    assert token not in await tokens(engine)


async def test_prune_dry_run_only_counts(aged, database_url):
    before = await snapshot(aged)

    result = await invoke(
        ["events", "prune", "--older-than", "90d", "--dry-run"], cli_env(database_url)
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Would delete 2 stored event(s) received before ")
    assert lines[1] == (
        "Would remove the raw payload of 1 older event(s) kept because audit events point to them."
    )
    assert lines[2].startswith("Would delete 3 token(s) received and signed before ")
    assert await snapshot(aged) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0d", "'0d' is not a positive duration; use at least 1s"),
        ("ninety days", "'ninety days' is not a duration"),
        ("-5d", "'-5d' is not a duration"),
    ],
)
async def test_prune_rejects_bad_retention(engine, database_url, value, message):
    result = await invoke(["events", "prune", "--older-than", value], cli_env(database_url))

    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())
