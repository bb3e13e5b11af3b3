"""`events`, `history` and reconciliation on subject tables owned by the invoicing API."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from mgwebhook.config import load_settings
from mgwebhook.db.engine import create_engine
from mgwebhook.db.subjects import configure_subjects
from mgwebhook.ingest import utc_now
from mgwebhook.reconcile import reconcile_once
from mgwebhook.server.app import create_app
from tests.conftest import SIGNING_KEY, reset_database
from tests.event_support import event_outcomes, invoke, json_lines, post_event

# Accounts have integer ids, so text ids must never reach a comparison with them.
MAPPING = """
[subjects]
managed = false

[subjects.document]
table = "invoices"
id_column = "invoice_no"
message_id_column = "mailgun_message"
status_column = "mail_state"
status_updated_at_column = ""

[subjects.tenant]
table = "accounts"
id_column = "account_id"
id_type = "integer"
message_id_column = "verification_message"
status_column = "verification_status"
status_updated_at_column = ""
"""

API_TABLES = [
    "CREATE TABLE invoices (invoice_no VARCHAR(40) PRIMARY KEY, mailgun_message TEXT, "
    "mail_state VARCHAR(20))",
    "CREATE TABLE accounts (account_id INTEGER PRIMARY KEY, verification_message TEXT, "
    "verification_status TEXT)",
    "INSERT INTO invoices VALUES ('INV-7', '<inv@mg.example.com>', 'SENT')",
    "INSERT INTO accounts VALUES (7, '<acct@mg.example.com>', 'SENT')",
]


@pytest.fixture
async def mapped(database_url: str, tmp_path: Path, aiohttp_client):
    """A client of an app on the invoicing API's tables, the engine and the config file."""
    await reset_database(database_url)
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        for statement in API_TABLES:
            await connection.execute(text(statement))
    config = tmp_path / "mapped.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n{MAPPING}')
    assert (await invoke(["db", "upgrade", "--config", str(config)], {})).exit_code == 0
    settings = load_settings(config, environ={})
    configure_subjects(settings.subjects)
    app = create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    client = await aiohttp_client(app)
    yield client, engine, config
    await engine.dispose()
    configure_subjects(load_settings(None, environ={}).subjects)


async def test_mapped_history_with_integer_ids(mapped):
    client, _engine, config = mapped
    await post_event(client, "delivered", "acct@mg.example.com")
    await post_event(client, "complained", "inv@mg.example.com")
    env = {"COLUMNS": "200"}

    by_id = await invoke(["history", "7", "--json", "--config", str(config)], env)
    assert by_id.exit_code == 0, by_id.output
    [account] = json_lines(by_id.stdout)
    assert (account["subject_type"], account["subject_id"]) == ("tenant", "7")
    assert account["email_status"] == "DELIVERED"
    assert account["email_status_updated_at"] is None
    assert [event["event_type"] for event in account["events"]] == ["EMAIL_DELIVERED"]

    by_text = await invoke(["history", "INV-7", "--json", "--config", str(config)], env)
    assert by_text.exit_code == 0, by_text.output
    assert [(r["subject_type"], r["email_status"]) for r in json_lines(by_text.stdout)] == [
        ("document", "COMPLAINED")
    ]

    by_message_id = await invoke(
        ["history", "<acct@mg.example.com>", "--json", "--config", str(config)], env
    )
    assert json_lines(by_message_id.stdout) == [account]


@pytest.mark.parametrize(
    ("subject", "expected_ids"),
    [
        ("tenant:7", [1]),
        ("tenant:abc", []),
        ("tenant:99999999999999999999", []),
        ("document:7", []),
    ],
)
async def test_mapped_list_by_subject(mapped, subject, expected_ids):
    client, _engine, config = mapped
    await post_event(client, "delivered", "acct@mg.example.com")

    result = await invoke(
        ["events", "list", "--json", "--subject", subject, "--config", str(config)], {}
    )

    assert result.exit_code == 0, result.output
    assert [record["id"] for record in json_lines(result.stdout)] == expected_ids


async def test_mapped_reconcile_applies_late_row(mapped):
    client, engine, _config = mapped
    await post_event(client, "delivered", "late@mg.example.com")
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO accounts VALUES (8, '<late@mg.example.com>', 'SENT')")
        )

    results = await reconcile_once(engine, timedelta(hours=1), utc_now() + timedelta(seconds=2))

    assert [result.outcome for result in results] == ["applied"]
    assert await event_outcomes(engine) == {1: "applied"}
    async with engine.connect() as connection:
        status = await connection.scalar(
            text("SELECT verification_status FROM accounts WHERE account_id = 8")
        )
    assert status == "DELIVERED"
