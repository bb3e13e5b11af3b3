"""The serve, db and track commands through Typer's runner and as processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from mgwebhook.cli.app import app
from mgwebhook.db.engine import create_engine
from mgwebhook.db.migrate import upgrade_schema
from mgwebhook.db.schema import documents, email_events
from tests.conftest import SIGNING_KEY, reset_database
from tests.helpers import fixture, signed, stored_events

runner = CliRunner()


async def invoke(arguments: list[str], env: dict[str, str]):
    """Run the CLI in a worker thread: its asyncio.run cannot share the test's event loop."""
    return await asyncio.to_thread(runner.invoke, app, arguments, env=env)


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    return {"MGWEBHOOK_DATABASE_URL": database_url, "COLUMNS": "200", **extra}


def test_serve_refuses_without_signing_key(tmp_path):
    env = {
        "MAILGUN_WEBHOOK_SIGNING_KEY": "",
        "MGWEBHOOK_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    result = runner.invoke(app, ["serve"], env=env)
    assert result.exit_code == 1
    assert "MAILGUN_WEBHOOK_SIGNING_KEY is not set" in result.output
    assert "HTTP webhook signing key" in result.output
    assert not (tmp_path / "x.db").exists()


def test_serve_reports_bad_config(tmp_path):
    result = runner.invoke(app, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


async def test_track_creates_row_and_applies_waiting_events(client, engine, database_url):
    await_post = await client.post("/v1/mailgun/webhook", json=signed(fixture("delivered")))
    assert await_post.status == 200
    assert [outcome for *_, outcome in await stored_events(engine)] == ["unmatched"]

    result = await invoke(
        ["track", "document", "INV-1042", "<20130503182626.18666.16540@mg.example.com>"],
        cli_env(database_url),
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Tracked document INV-1042: message id 20130503182626.18666.16540@mg.example.com, "
        "status DELIVERED",
        "Applied 1 stored event(s): 1",
    ]
    async with engine.connect() as connection:
        row = (await connection.execute(select(documents))).one()
        audit = (await connection.execute(select(email_events.c.event_type))).scalars().all()
    assert row.email_message_id == "20130503182626.18666.16540@mg.example.com"
    assert row.email_status == "DELIVERED"
    assert audit == ["EMAIL_DELIVERED"]
    assert [outcome for *_, outcome in await stored_events(engine)] == ["applied"]


async def test_track_same_message_again_keeps_status(client, engine, database_url):
    env = cli_env(database_url)
    assert (await invoke(["track", "tenant", "T-1", "m-1@x"], env)).exit_code == 0
    data = fixture("complained")
    data["message"]["headers"]["message-id"] = "m-1@x"
    assert (await client.post("/v1/mailgun/webhook", json=signed(data))).status == 200

    again = await invoke(["track", "tenant", "T-1", "<m-1@x>"], env)
    assert again.output.strip() == "Tracked tenant T-1: message id m-1@x, status COMPLAINED"
    resend = await invoke(["track", "tenant", "T-1", "<m-2@x>"], env)
    assert resend.output.strip() == "Tracked tenant T-1: message id m-2@x, status SENT"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["track", "invoice", "1", "m@x"], "'invoice' is not one of 'document', 'tenant'"),
        (["track", "document", "1", "<>"], "message id '<>' is empty"),
        (["track", "document", " ", "m@x"], "subject id is empty"),
    ],
)
def test_track_rejects_bad_arguments(tmp_path, arguments, message):
    result = runner.invoke(app, arguments, env=cli_env(f"sqlite:///{tmp_path}/x.db"))
    assert result.exit_code in (1, 2)
    assert message in result.output


def test_db_upgrade_creates_schema(database_url):
    result = runner.invoke(app, ["db", "upgrade"], env=cli_env(database_url))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Schema is up to date on ")
    again = runner.invoke(app, ["db", "upgrade"], env=cli_env(database_url))
    assert again.exit_code == 0


def test_db_upgrade_unreachable_database():
    url = "postgresql+asyncpg://postgres:secret-pw@127.0.0.1:9/test"
    result = runner.invoke(app, ["db", "upgrade"], env=cli_env(url))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "secret-pw" not in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_python_module_serves_a_tracked_document(tmp_path: Path):
    """End to end as a user runs it: track, serve, post a signed event, read the row."""
    port = _free_port()
    env = {
        **os.environ,
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY.decode(),
        "MGWEBHOOK_DATABASE_URL": f"sqlite:///{tmp_path}/mgwebhook.db",
    }
    track = subprocess.run(
        [sys.executable, "-m", "mgwebhook", "track", "document", "INV-1", "<m-1@mg.example.com>"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert track.returncode == 0, track.stderr
    server = subprocess.Popen(
        [sys.executable, "-m", "mgwebhook", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/mailgun/webhook"
        data = fixture("delivered")
        data["message"]["headers"]["message-id"] = "m-1@mg.example.com"
        response = None
        for _ in range(100):
            try:
                response = httpx.post(url, json=signed(data), timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert response is not None
        assert response.status_code == 200
        assert response.json() == {"ok": True}
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert server.returncode == 0
    assert "outcome=applied status=200" in output
    assert SIGNING_KEY.decode() not in output

    history = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                "print(c.execute('select email_status from documents').fetchone()[0]);"
                "print(c.execute('select event_type from email_events').fetchall())"
            ),
            f"{tmp_path}/mgwebhook.db",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert history.stdout.splitlines() == ["DELIVERED", "[('EMAIL_DELIVERED',)]"]


async def test_serve_refuses_database_behind_code(database_url, tmp_path):
    if database_url.startswith("sqlite"):
        pytest.skip("serve upgrades a SQLite file itself")
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        await upgrade_schema(engine, "0001")
    finally:
        await engine.dispose()
    env = cli_env(database_url, MAILGUN_WEBHOOK_SIGNING_KEY="k")
    result = await invoke(["serve", "--port", "0"], env)
    assert result.exit_code == 1
    assert result.output == (
        "Error: the database schema is at revision 0001 and this code needs 0003; "
        "run: mgwebhook db upgrade\n"
    )


async def test_db_current_reports_revision(database_url):
    await reset_database(database_url)
    env = cli_env(database_url)
    before = await invoke(["db", "current"], env)
    assert (
        before.output
        == "No mgwebhook schema yet (the code needs 0003); run: mgwebhook db upgrade\n"
    )
    assert (await invoke(["db", "upgrade"], env)).exit_code == 0
    after = await invoke(["db", "current"], env)
    assert after.output == "0003 (up to date)\n"
