"""Helpers for the tests of `events`, `history`, `send-test` and reconciliation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from mgwebhook import samples
from mgwebhook.cli.app import app
from mgwebhook.db.schema import documents, email_events, tenants, webhook_events, webhook_tokens
from tests.conftest import SIGNING_KEY
from tests.helpers import WEBHOOK_PATH

runner = CliRunner()


async def invoke(arguments: list[str], env: dict[str, str]) -> Result:
    """Run the CLI in a worker thread: its asyncio.run cannot share the test's event loop."""
    return await asyncio.to_thread(runner.invoke, app, arguments, env=env)


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    return {"MGWEBHOOK_DATABASE_URL": database_url, "COLUMNS": "200", **extra}


async def post_event(
    client: TestClient,
    event: str,
    message_id: str,
    *,
    expected_status: int = 200,
    **options: Any,
) -> None:
    """Post a signed JSON webhook built by mgwebhook.samples and check the status."""
    data = samples.event_data(event, message_id, **options)
    await post_data(client, data, expected_status=expected_status)


async def post_data(
    client: TestClient, data: dict[str, Any], *, expected_status: int = 200
) -> None:
    response = await client.post(WEBHOOK_PATH, json=samples.json_webhook(SIGNING_KEY, data))
    assert response.status == expected_status, await response.text()


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def table_rows(output: str) -> list[list[str]]:
    """Split the body lines of a rich table (after the rule under the header) into cells."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if set(line.strip()) == {"─"})
    return [line.split() for line in lines[start + 1 :] if line.strip()]


async def snapshot(engine: AsyncEngine) -> dict[str, list[Any]]:
    """Every row of every table mgwebhook writes, for before/after comparisons."""
    tables = {
        "documents": (documents, documents.c.id),
        "tenants": (tenants, tenants.c.id),
        "webhook_events": (webhook_events, webhook_events.c.id),
        "email_events": (email_events, email_events.c.id),
        "webhook_tokens": (webhook_tokens, webhook_tokens.c.token),
    }
    result = {}
    async with engine.connect() as connection:
        for name, (table, key) in tables.items():
            rows = await connection.execute(select(table).order_by(key))
            result[name] = list(rows.all())
    return result


async def event_outcomes(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(webhook_events.c.id, webhook_events.c.outcome).order_by(webhook_events.c.id)
        )
        return {event_id: outcome for event_id, outcome in rows}


async def set_received_at(engine: AsyncEngine, webhook_event_id: int, value: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            update(webhook_events)
            .where(webhook_events.c.id == webhook_event_id)
            .values(received_at=value)
        )
