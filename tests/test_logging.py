"""Log output: JSON lines with fixed fields, recipient modes, and the serve flags."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mgwebhook.cli.app import app as cli_app
from mgwebhook.config import LoggingSettings
from mgwebhook.errors import ConfigError
from mgwebhook.logs import JsonFormatter, hash_recipient, make_formatter
from mgwebhook.server.app import create_app
from tests.conftest import OTHER_KEY, SIGNING_KEY
from tests.helpers import FIXTURE_MESSAGE_ID, fixture, insert_document, post_json, signed

RECIPIENT = "alice@example.com"
# The first 12 hex digits of sha256(b"alice@example.com").
RECIPIENT_HASH = hashlib.sha256(RECIPIENT.encode()).hexdigest()[:12]
BASE_KEYS = {"time", "level", "logger", "message"}
WEBHOOK_KEYS = BASE_KEYS | {"token", "event", "message_id", "outcome", "status", "latency_ms"}
MESSAGE_ID = FIXTURE_MESSAGE_ID.strip("<>")

runner = CliRunner()


@pytest.fixture
def json_lines():
    """Capture the mgwebhook.webhook logger as JSON; call the fixture to get the parsed lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    webhook_logger = logging.getLogger("mgwebhook.webhook")
    level = webhook_logger.level
    webhook_logger.addHandler(handler)
    webhook_logger.setLevel(logging.INFO)

    def read() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield read
    webhook_logger.removeHandler(handler)
    webhook_logger.setLevel(level)


async def client_with_recipients(aiohttp_client, engine, settings, mode: str):
    configured = replace(settings, logging=LoggingSettings(log_recipients=mode))
    app = create_app(configured, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    return await aiohttp_client(app)


def text_line(entry: dict) -> str:
    """The text message the handler writes for the fields of a JSON entry."""
    return (
        f"webhook token={entry['token']} event={entry['event']} "
        f"message_id={entry['message_id']} outcome={entry['outcome']} "
        f"status={entry['status']} latency_ms={entry['latency_ms']:.1f}"
    )


async def test_json_webhook_line_has_exact_fields(aiohttp_client, engine, settings, json_lines):
    client = await client_with_recipients(aiohttp_client, engine, settings, "omit")
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    token = "a1b2c3d4" + "e" * 42
    assert (await post_json(client, signed(fixture("delivered"), token=token)))[0] == 200

    lines = json_lines()
    assert len(lines) == 1
    entry = lines[0]
    assert set(entry) == WEBHOOK_KEYS
    assert entry["level"] == "INFO"
    assert entry["logger"] == "mgwebhook.webhook"
    assert entry["token"] == "a1b2c3d4"
    assert entry["event"] == "delivered"
    assert entry["message_id"] == MESSAGE_ID
    assert entry["outcome"] == "applied"
    assert entry["status"] == 200
    assert isinstance(entry["latency_ms"], float)
    assert entry["message"] == text_line(entry)
    assert datetime.fromisoformat(entry["time"]).utcoffset() == UTC.utcoffset(None)


async def test_json_lines_of_rejected_request(aiohttp_client, engine, settings, json_lines):
    client = await client_with_recipients(aiohttp_client, engine, settings, "hash")
    token = "f0e1d2c3" + "0" * 42
    status, _ = await post_json(client, signed(fixture("delivered"), key=OTHER_KEY, token=token))
    assert status == 401

    warning, info = json_lines()
    assert set(warning) == BASE_KEYS
    assert warning["level"] == "WARNING"
    assert warning["message"].startswith("webhook rejected: ")
    assert "(token f0e1d2c3, remote 127.0.0.1)" in warning["message"]
    assert set(info) == WEBHOOK_KEYS | {"recipient"}
    assert info["token"] == "f0e1d2c3"
    assert info["event"] == "-"
    assert info["message_id"] == "-"
    assert info["outcome"] == "bad-signature"
    assert info["status"] == 401
    # No event was read from a rejected body, so there is no recipient to hash.
    assert info["recipient"] == "-"
    assert info["message"] == text_line(info) + " recipient=-"


@pytest.mark.parametrize(
    ("mode", "shown"),
    [("omit", None), ("hash", RECIPIENT_HASH), ("plain", RECIPIENT)],
)
async def test_recipient_per_setting(aiohttp_client, engine, settings, json_lines, mode, shown):
    client = await client_with_recipients(aiohttp_client, engine, settings, mode)
    assert (await post_json(client, signed(fixture("delivered"))))[0] == 200

    (entry,) = json_lines()
    assert entry["outcome"] == "unmatched"
    if shown is None:
        assert "recipient" not in entry
        assert "recipient=" not in entry["message"]
        assert RECIPIENT not in entry["message"]
    else:
        assert entry["recipient"] == shown
        assert entry["message"] == f"{text_line(entry)} recipient={shown}"
    if mode == "hash":
        assert RECIPIENT not in json.dumps(entry)


def test_hash_recipient_ignores_case_and_spaces():
    assert hash_recipient(RECIPIENT) == RECIPIENT_HASH
    assert hash_recipient(" Alice@Example.COM ") == RECIPIENT_HASH
    assert len(RECIPIENT_HASH) == 12


def test_json_formatter_keeps_traceback_on_one_line():
    try:
        raise ValueError("bad value 42")
    except ValueError:
        record = logging.getLogger("mgwebhook.test").makeRecord(
            "mgwebhook.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    output = JsonFormatter().format(record)
    assert "\n" not in output
    entry = json.loads(output)
    assert set(entry) == BASE_KEYS | {"exception"}
    assert entry["message"] == "failed here"
    assert entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: bad value 42")


def test_make_formatter_rejects_unknown_format():
    assert isinstance(make_formatter("json"), JsonFormatter)
    with pytest.raises(ConfigError, match="log format 'xml' is invalid; use text or json"):
        make_formatter("xml")


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (["--log-format", "xml"], {}, "logging format 'xml' is invalid; use text or json"),
        ([], {"MGWEBHOOK_LOGGING_FORMAT": "yaml"}, "logging format 'yaml' is invalid"),
        (
            [],
            {"MGWEBHOOK_LOGGING_LOG_RECIPIENTS": "all"},
            "logging log_recipients 'all' is invalid; use omit, hash, plain",
        ),
        (["--log-level", "LOUD"], {}, "log level 'LOUD' is invalid"),
        (["--metrics-port", "70000"], {}, "server metrics_port 70000 is out of range"),
        (["--metrics-port", "8080"], {}, "server metrics_port 8080 is the same as port"),
    ],
)
def test_serve_rejects_bad_options(tmp_path, arguments, env, message):
    env = {
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY.decode(),
        "MGWEBHOOK_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "COLUMNS": "200",
        **env,
    }
    result = runner.invoke(cli_app, ["serve", *arguments], env=env)
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "x.db").exists()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_serve_writes_json_lines(tmp_path: Path):
    """Run `mgwebhook serve --log-format json --metrics-port` and parse everything it logs."""
    port, metrics_port = _free_ports(2)
    env = {
        **os.environ,
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY.decode(),
        "MGWEBHOOK_DATABASE_URL": f"sqlite:///{tmp_path}/mgwebhook.db",
        "MGWEBHOOK_LOGGING_LOG_RECIPIENTS": "hash",
    }
    command = [sys.executable, "-m", "mgwebhook", "serve", "--port", str(port)]
    command += ["--metrics-port", str(metrics_port), "--log-format", "json"]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        response = None
        for _ in range(100):
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/mailgun/webhook",
                    json=signed(fixture("delivered")),
                    timeout=5,
                )
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert response is not None
        assert response.status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'mgwebhook_webhook_requests_total{outcome="unmatched",status="200"} 1.0' in (
            metrics.text
        )
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert server.returncode == 0

    entries = [json.loads(line) for line in output.splitlines()]
    messages = [entry["message"] for entry in entries]
    assert all(set(entry) >= BASE_KEYS for entry in entries)
    assert messages[0].startswith(f"mgwebhook listening on http://127.0.0.1:{port}/v1/mailgun")
    assert f"serving Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics" in messages
    assert messages[-1] == "mgwebhook stopped"
    (webhook,) = [entry for entry in entries if entry["logger"] == "mgwebhook.webhook"]
    assert set(webhook) == WEBHOOK_KEYS | {"recipient"}
    assert webhook["outcome"] == "unmatched"
    assert webhook["status"] == 200
    assert webhook["recipient"] == RECIPIENT_HASH
    assert RECIPIENT not in output
    assert SIGNING_KEY.decode() not in output


def test_malformed_request_traceback_becomes_one_warning():
    from aiohttp.http_exceptions import BadHttpMessage

    from mgwebhook.logs import _quiet_bad_requests

    try:
        raise BadHttpMessage("Invalid method encountered")
    except BadHttpMessage:
        record = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request",
            (),
            sys.exc_info(),
        )
    assert _quiet_bad_requests(record) is True
    assert record.levelname == "WARNING"
    assert record.exc_info is None
    assert (
        record.getMessage() == "malformed HTTP request: 400, message:\n  Invalid method encountered"
    )
