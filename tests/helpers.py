"""Signing helpers, captured-payload fixtures and database read-backs for tests."""

from __future__ import annotations

import copy
import email.parser
import email.policy
import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import MultipartWriter
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.schema import documents, email_events, tenants, webhook_events, webhook_tokens
from mgwebhook.samples import signature_block
from tests.conftest import SIGNING_KEY

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOK_PATH = "/v1/mailgun/webhook"
# The message id every fixture carries, as the send API returned it.
FIXTURE_MESSAGE_ID = "<20130503182626.18666.16540@mg.example.com>"


def fixture(name: str, **changes: Any) -> dict[str, Any]:
    """Load `event-data` (or legacy form fields) from tests/fixtures and apply `changes`."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    data = copy.deepcopy(data)
    data.update(changes)
    return data


def with_message_id(data: dict[str, Any], message_id: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data.setdefault("message", {}).setdefault("headers", {})["message-id"] = message_id
    return data


def signed(
    data: Any,
    *,
    key: bytes = SIGNING_KEY,
    timestamp: int | str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Return a JSON webhook body around `data` with a valid signature block."""
    return {"signature": signature_block(key, timestamp=timestamp, token=token), "event-data": data}


def signed_form(
    fields: dict[str, str],
    *,
    key: bytes = SIGNING_KEY,
    timestamp: int | None = None,
    token: str | None = None,
) -> dict[str, str]:
    """Return legacy form fields with timestamp, token and signature added."""
    return {**fields, **signature_block(key, timestamp=timestamp, token=token)}


def fresh_token() -> str:
    return secrets.token_hex(25)


async def post_json(client: TestClient, body: Any) -> tuple[int, Any]:
    response = await client.post(WEBHOOK_PATH, json=body)
    return response.status, await _json_or_text(response)


async def post_form(
    client: TestClient, fields: dict[str, str] | list[tuple[str, str]], multipart: bool = False
) -> tuple[int, Any]:
    if multipart:
        items = fields.items() if isinstance(fields, dict) else fields
        with MultipartWriter("form-data") as writer:
            for name, value in items:
                part = writer.append(value)
                part.set_content_disposition("form-data", name=name)
        response = await client.post(WEBHOOK_PATH, data=writer)
    else:
        response = await client.post(WEBHOOK_PATH, data=fields)
    return response.status, await _json_or_text(response)


async def _json_or_text(response: Any) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return text


async def insert_document(
    engine: AsyncEngine, document_id: str, message_id: str | None, status: str | None = "SENT"
) -> None:
    """Insert a row the way the invoicing API does, message id in angle brackets."""
    async with engine.begin() as connection:
        await connection.execute(
            documents.insert().values(
                id=document_id, email_message_id=message_id, email_status=status
            )
        )


async def insert_tenant(
    engine: AsyncEngine, tenant_id: str, message_id: str | None, status: str | None = "SENT"
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            tenants.insert().values(id=tenant_id, email_message_id=message_id, email_status=status)
        )


async def status_of(engine: AsyncEngine, document_id: str, table: Any = documents) -> str | None:
    async with engine.connect() as connection:
        return await connection.scalar(
            select(table.c.email_status).where(table.c.id == document_id)
        )


async def audit_rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """(subject_type, subject_id, event_type, status_before, status_after, status_changed)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                email_events.c.subject_type,
                email_events.c.subject_id,
                email_events.c.event_type,
                email_events.c.status_before,
                email_events.c.status_after,
                email_events.c.status_changed,
            ).order_by(email_events.c.id)
        )
        return [tuple(row) for row in rows]


async def stored_events(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """(event, message_id, outcome) of every stored webhook event, oldest first."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                webhook_events.c.event, webhook_events.c.message_id, webhook_events.c.outcome
            ).order_by(webhook_events.c.id)
        )
        return [tuple(row) for row in rows]


async def raw_payloads(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            select(webhook_events.c.raw_payload).order_by(webhook_events.c.id)
        )
        return list(rows)


async def token_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return len((await connection.scalars(select(webhook_tokens.c.token))).all())


def now() -> int:
    return int(time.time())


def multipart_fields(request: httpx.Request) -> list[tuple[str, str]]:
    """Return the (name, value) fields of a multipart/form-data request, in order."""
    content_type = request.headers["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.read())
    fields = []
    for part in message.iter_parts():
        assert part.get_filename() is None
        name = part.get_param("name", header="content-disposition")
        fields.append((str(name), part.get_payload(decode=True).decode()))
    return fields
