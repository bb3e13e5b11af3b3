"""Subject tables owned by the invoicing API, with other names and extra columns."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from mgwebhook.cli.app import app
from mgwebhook.config import SubjectMapping, SubjectSettings, load_settings
from mgwebhook.db.check import STATISTICS_MIN_ROWS, check_subject_tables
from mgwebhook.db.engine import create_engine, session_factory
from mgwebhook.db.migrate import upgrade_schema
from mgwebhook.db.schema import documents
from mgwebhook.db.subjects import configure_subjects
from mgwebhook.ingest import VerifiedWebhook, ingest_batch
from mgwebhook.payloads import parse_body
from mgwebhook.server.app import create_app
from tests.conftest import SIGNING_KEY, reset_database
from tests.helpers import fixture, post_json, signed

runner = CliRunner()

MAPPING = """
[subjects]
managed = false

[subjects.document]
table = "invoices"
id_column = "invoice_no"
message_id_column = "mailgun_message"
status_column = "mail_state"
status_updated_at_column = "mail_state_at"

[subjects.tenant]
table = "accounts"
id_column = "account_id"
id_type = "integer"
message_id_column = "verification_message"
status_column = "verification_status"
status_updated_at_column = ""
"""

API_TABLES = [
    "CREATE TABLE invoices (invoice_no VARCHAR(40) PRIMARY KEY, customer TEXT NOT NULL, "
    "amount NUMERIC(12, 2), mailgun_message TEXT, mail_state VARCHAR(20), "
    "mail_state_at TIMESTAMP WITH TIME ZONE)",
    "CREATE TABLE accounts (account_id INTEGER PRIMARY KEY, name TEXT, login_count INTEGER, "
    "verification_message TEXT, verification_status TEXT)",
    "INSERT INTO invoices (invoice_no, customer, amount, mailgun_message, mail_state) "
    "VALUES ('INV-1042', 'ACME', 99.50, '<20130503182626.18666.16540@mg.example.com>', 'QUEUED')",
    "INSERT INTO accounts (account_id, name, verification_message, verification_status) "
    "VALUES (7, 'ACME', '20130503182626.18666.16540@mg.example.com', 'SENT')",
]


@pytest.fixture
async def api_database(database_url: str, tmp_path: Path):
    """A database that holds only the invoicing API's own tables, and a config mapping them."""
    await reset_database(database_url)
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        for statement in API_TABLES:
            await connection.execute(text(statement))
    config = tmp_path / "mapped.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n{MAPPING}')
    yield engine, config
    await engine.dispose()
    configure_subjects(load_settings(None, environ={}).subjects)


async def invoke(arguments: list[str]):
    return await asyncio.to_thread(runner.invoke, app, arguments, env={"COLUMNS": "200"})


async def table_names(engine) -> set[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda c: set(inspect(c).get_table_names()))


async def test_upgrade_leaves_api_tables_alone(api_database):
    engine, config = api_database
    result = await invoke(["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 0, result.output
    tables = await table_names(engine)
    assert "documents" not in tables
    assert "tenants" not in tables
    assert {"invoices", "accounts", "webhook_events", "email_events"} <= tables
    async with engine.connect() as connection:
        indexes = await connection.run_sync(lambda c: inspect(c).get_indexes("invoices"))
    assert indexes == []

    check = await invoke(["db", "check", "--config", str(config)])
    assert check.exit_code == 0, check.output
    assert check.output == "The documents and tenants tables have every configured column.\n"


async def test_check_names_missing_and_mistyped_columns(api_database):
    engine, config = api_database
    broken = (
        config.read_text()
        .replace('"mail_state_at"', '"mailed_at"')
        .replace('status_column = "verification_status"', 'status_column = "login_count"')
    )
    config.write_text(broken)
    result = await invoke(["db", "check", "--config", str(config)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "Error: the subject tables are not usable:"
    assert lines[1].startswith(
        "- column invoices.mailed_at (document status timestamp) does not exist (columns: amount, "
    )
    assert lines[2] == (
        "- column accounts.login_count (tenant status) has type INTEGER; expected text"
    )
    assert len(lines) == 3


async def test_webhook_updates_mapped_rows(api_database, aiohttp_client):
    engine, config = api_database
    assert (await invoke(["db", "upgrade", "--config", str(config)])).exit_code == 0
    settings = load_settings(config, environ={})
    client = await aiohttp_client(
        create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    )
    assert await post_json(client, signed(fixture("failed_permanent"))) == (200, {"ok": True})

    async with engine.connect() as connection:
        invoice = (
            await connection.execute(
                text("SELECT mail_state, mail_state_at, customer, amount FROM invoices")
            )
        ).one()
        account = (await connection.execute(text("SELECT verification_status FROM accounts"))).one()
        audit = (
            await connection.execute(
                text(
                    "SELECT subject_type, subject_id, event_type, status_before, status_after "
                    "FROM email_events ORDER BY subject_type"
                )
            )
        ).all()
    assert invoice[0] == "FAILED"
    assert invoice[1] is not None
    assert (invoice[2], float(invoice[3])) == ("ACME", 99.5)
    assert account[0] == "FAILED"
    assert [tuple(row) for row in audit] == [
        ("document", "INV-1042", "EMAIL_FAILED", "QUEUED", "FAILED"),
        ("tenant", "7", "EMAIL_FAILED", "SENT", "FAILED"),
    ]


async def test_track_converts_integer_ids(api_database):
    engine, config = api_database
    assert (await invoke(["db", "upgrade", "--config", str(config)])).exit_code == 0
    result = await invoke(["track", "tenant", "8", "<new@mg.example.com>", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Tracked tenant 8: message id new@mg.example.com, status SENT"
    bad = await invoke(["track", "tenant", "eight", "m@x", "--config", str(config)])
    assert bad.exit_code == 1
    assert "tenant id 'eight' is not an integer" in bad.output
    huge = await invoke(["track", "tenant", str(2**63), "m@x", "--config", str(config)])
    assert huge.exit_code == 1
    assert f"tenant id '{2**63}' is outside the range of a 64-bit integer id" in huge.output


def test_one_column_for_two_roles_is_rejected(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(MAPPING.replace('"verification_status"', '"account_id"'))
    result = runner.invoke(app, ["db", "check", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output == (
        "Error: [subjects.tenant] in " + str(config) + " uses column 'account_id' for more than "
        "one role; map id, message id, status and status timestamp to distinct columns\n"
    )


UUID_DOCUMENT = "320c48de-0d9d-4e45-91b0-c90b9f54e927"


@pytest.fixture
async def mixed_id_types(database_url: str):
    """Documents keyed by UUID and tenants keyed by text, on one message id."""
    await reset_database(database_url)
    engine = create_engine(database_url)
    uuid_type = "UUID" if engine.dialect.name == "postgresql" else "VARCHAR(36)"
    async with engine.begin() as connection:
        await connection.execute(
            text(f"CREATE TABLE docs (id {uuid_type} PRIMARY KEY, msg TEXT, state TEXT)")
        )
        await connection.execute(
            text("CREATE TABLE tens (id TEXT PRIMARY KEY, msg TEXT, state TEXT)")
        )
        await connection.execute(
            text(f"INSERT INTO docs VALUES ('{UUID_DOCUMENT}', '<shared@mg>', 'SENT')")
        )
        await connection.execute(text("INSERT INTO tens VALUES ('T-1', '<shared@mg>', 'SENT')"))
    settings = SubjectSettings(
        managed=False,
        document=SubjectMapping(
            "docs",
            id_type="uuid",
            message_id_column="msg",
            status_column="state",
            status_updated_at_column="",
        ),
        tenant=SubjectMapping(
            "tens", message_id_column="msg", status_column="state", status_updated_at_column=""
        ),
    )
    configure_subjects(settings)
    await upgrade_schema(engine)
    yield engine
    await engine.dispose()
    configure_subjects(SubjectSettings())


async def states(engine, table: str) -> list[str]:
    async with engine.connect() as connection:
        statement = text(f"SELECT state FROM {table} ORDER BY id")
        return list((await connection.execute(statement)).scalars())


async def audit_subjects(engine) -> list[tuple[str, str]]:
    async with engine.connect() as connection:
        statement = text("SELECT subject_type, subject_id FROM email_events ORDER BY subject_type")
        return [(row[0], row[1]) for row in await connection.execute(statement)]


def verified(data: dict) -> VerifiedWebhook:
    body = json.dumps(signed(data)).encode()
    return VerifiedWebhook(parse_body("application/json", body), datetime.now(UTC))


async def test_mixed_id_types_keep_their_own_ids(mixed_id_types):
    engine = mixed_id_types
    data = fixture("delivered")
    data["message"]["headers"]["message-id"] = "shared@mg"
    async with session_factory(engine)() as session, session.begin():
        results = await session.run_sync(ingest_batch, [verified(data)], datetime.now(UTC))
    assert [r.outcome for r in results] == ["applied"]
    assert await audit_subjects(engine) == [("document", UUID_DOCUMENT), ("tenant", "T-1")]
    assert await states(engine, "docs") == ["DELIVERED"]
    assert await states(engine, "tens") == ["DELIVERED"]


async def test_bad_row_fails_only_its_own_post(mixed_id_types, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's uuid type rejects the malformed id on insert")
    engine = mixed_id_types
    # SQLite stores any text; reading this id as a UUID raises ValueError.
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO docs VALUES ('not-a-uuid', '<bad@mg>', 'SENT')"))
    bad, good = fixture("delivered"), fixture("complained")
    bad["message"]["headers"]["message-id"] = "bad@mg"
    good["message"]["headers"]["message-id"] = "shared@mg"
    async with session_factory(engine)() as session, session.begin():
        results = await session.run_sync(
            ingest_batch, [verified(bad), verified(good)], datetime.now(UTC)
        )
    assert type(results[0]).__name__ == "DatabaseUnavailable"
    assert str(results[0]) == "ValueError while applying the event"
    assert results[1].outcome == "applied"
    assert await states(engine, "tens") == ["COMPLAINED"]


async def test_case_variant_ids_share_one_audit_row(mixed_id_types, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's uuid type has one spelling per value")
    engine = mixed_id_types
    # Both ids read back as the same UUID text, which names one row in the audit trail.
    async with engine.begin() as connection:
        await connection.execute(
            text(f"INSERT INTO docs VALUES ('{UUID_DOCUMENT.upper()}', '<shared@mg>', 'SENT')")
        )
    data = fixture("delivered")
    data["message"]["headers"]["message-id"] = "shared@mg"
    async with session_factory(engine)() as session, session.begin():
        results = await session.run_sync(ingest_batch, [verified(data)], datetime.now(UTC))
    assert [r.outcome for r in results] == ["applied"]
    assert await audit_subjects(engine) == [("document", UUID_DOCUMENT), ("tenant", "T-1")]
    # Each spelling is updated as stored.
    assert await states(engine, "docs") == ["DELIVERED", "DELIVERED"]


async def test_check_names_table_without_statistics(engine, database_url):
    rows = [
        {"id": f"INV-{number}", "email_message_id": f"<m-{number}@mg>", "email_status": "SENT"}
        for number in range(STATISTICS_MIN_ROWS)
    ]
    async with engine.begin() as connection:
        await connection.execute(documents.insert(), rows)

    problems = await check_subject_tables(engine)
    if database_url.startswith("sqlite"):
        # SQLite's planner takes the index without statistics.
        assert problems == []
        return
    assert problems == [
        "table 'documents' has at least 1000 rows but no planner statistics, so PostgreSQL "
        "may read all of it for each batch of webhooks; run: ANALYZE documents"
    ]
    async with engine.begin() as connection:
        await connection.execute(text("ANALYZE documents"))
    assert await check_subject_tables(engine) == []


@pytest.fixture
async def large_invoices(engine, database_url):
    """A mapped documents table named "Invoices", in mixed case, with 1000 rows."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the statistics check runs on PostgreSQL only")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                'CREATE TABLE "Invoices" (id TEXT PRIMARY KEY, email_message_id TEXT, '
                "email_status VARCHAR(32), email_status_updated_at TIMESTAMPTZ)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO \"Invoices\" SELECT 'I-' || g, '<m-' || g || '@mg>', 'SENT' "
                f"FROM generate_series(1, {STATISTICS_MIN_ROWS}) g"
            )
        )
    configure_subjects(SubjectSettings(document=SubjectMapping("Invoices"), managed=False))
    yield engine
    configure_subjects(SubjectSettings())


async def test_check_quotes_mixed_case_table(large_invoices):
    engine = large_invoices
    [problem] = await check_subject_tables(engine)
    assert problem.endswith('; run: ANALYZE "Invoices"')

    async with engine.begin() as connection:
        await connection.execute(text(problem.split("run: ", 1)[1]))
    assert await check_subject_tables(engine) == []


async def test_check_finds_table_on_search_path(large_invoices, database_url):
    engine = large_invoices
    async with engine.begin() as connection:
        await connection.execute(text('ANALYZE "Invoices"'))
        # With the default search path "$user", public, a schema named after
        # the login role becomes current_schema() while the tables stay in public.
        await connection.execute(text("CREATE SCHEMA IF NOT EXISTS postgres"))
    other = create_engine(database_url)
    try:
        assert await check_subject_tables(other) == []
    finally:
        async with other.begin() as connection:
            await connection.execute(text("DROP SCHEMA postgres"))
        await other.dispose()
