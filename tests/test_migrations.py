"""Alembic migrations on real databases: from empty, from the previous revision, and in sync."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from mgwebhook.db.engine import create_engine, create_schema, schema_behind, stored_revision
from mgwebhook.db.migrate import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    upgrade_schema,
)
from mgwebhook.db.schema import SCHEMA_REVISION, metadata, webhook_events
from tests.conftest import reset_database


async def test_empty_database_upgrades_to_head(database_url):
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) is None
        assert await schema_behind(engine) == (
            "the database has no mgwebhook schema; run: mgwebhook db upgrade (to 0003)"
        )
        await upgrade_schema(engine)
        assert await current_revision(engine) == head_revision() == "0003"
        assert await schema_behind(engine) is None

        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables == {
            "documents",
            "tenants",
            "webhook_tokens",
            "webhook_events",
            "email_events",
            VERSION_TABLE,
        }
    finally:
        await engine.dispose()


async def test_previous_revision_upgrades_and_keeps_rows(database_url):
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        await upgrade_schema(engine, "0001")
        assert await current_revision(engine) == "0001"
        assert await schema_behind(engine) == (
            "the database schema is at revision 0001 and this code needs 0003; "
            "run: mgwebhook db upgrade"
        )
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO webhook_events (received_at, token, payload_format, raw_payload, "
                    "event, outcome) VALUES (CURRENT_TIMESTAMP, 't1', 'json', '{}', 'delivered', "
                    "'applied')"
                )
            )
        await upgrade_schema(engine)
        assert await current_revision(engine) == "0003"
        async with engine.begin() as connection:
            await connection.execute(
                webhook_events.insert().values(
                    received_at=text("CURRENT_TIMESTAMP"),
                    token="t2",
                    payload_format="json",
                    raw_payload="{}",
                    event="x" * 500,
                    outcome="applied",
                )
            )
            events = (await connection.execute(select(webhook_events.c.event))).scalars().all()
        assert sorted(events, key=len) == ["delivered", "x" * 500]
    finally:
        await engine.dispose()


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_migrations_match_the_table_definitions(database_url):
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        await upgrade_schema(engine)

        # Subject tables and the version table are not part of mgwebhook's own metadata.
        outside = {"documents", "tenants", VERSION_TABLE}

        def differences(connection):
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return [
                diff
                for diff in compare_metadata(context, metadata)
                if not (diff[0] == "remove_table" and diff[1].name in outside)
                and not (diff[0] == "remove_index" and diff[1].table.name in outside)
            ]

        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


def test_schema_revision_is_newest_migration():
    assert head_revision() == SCHEMA_REVISION


async def test_create_schema_at_head_keeps_version(database_url):
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        await create_schema(engine)
        assert await stored_revision(engine) == SCHEMA_REVISION
        await create_schema(engine)
        assert await current_revision(engine) == SCHEMA_REVISION
    finally:
        await engine.dispose()


async def test_stored_revision_of_empty_database_is_none(database_url):
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        assert await stored_revision(engine) is None
    finally:
        await engine.dispose()
