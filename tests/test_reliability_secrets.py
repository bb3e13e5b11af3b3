"""Secrets never reach a log line, an error body or CLI output.

The signing key, the Mailgun API key and a database password are set for
every process and command here, and every byte they print or return is
searched for each secret, on success and error paths alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
import respx
from typer.testing import CliRunner

from mgwebhook.cli.app import app as cli_app
from mgwebhook.mailgun import client as client_module
from mgwebhook.mailgun.client import RetryPolicy
from mgwebhook.samples import event_data, json_webhook, signature_block
from tests.conftest import OTHER_KEY, SIGNING_KEY
from tests.helpers import FIXTURE_MESSAGE_ID, fixture, signed
from tests.reliability_support import (
    HOST,
    ServiceProcess,
    free_port,
    prepare_database,
    run_cli,
    service_env,
)

pytestmark = pytest.mark.slow

API_KEY = "key-5e1f0c9a7d3b2e6f8a4c0d1e2f3a4b5c"
DATABASE_PASSWORD = "db-password-7f3a9c"
DOMAIN = "mg.example.com"
US_API = "https://api.mailgun.net"


def secrets_in(text: str) -> list[str]:
    """Return the names of the secrets in `text`, found whole or by their last 16 characters."""
    found = []
    for name, secret in (
        ("signing key", SIGNING_KEY.decode()),
        ("API key", API_KEY),
        ("database password", DATABASE_PASSWORD),
    ):
        if secret in text or secret[-16:] in text:
            found.append(name)
    return found


def environment(database_url: str, **settings: str) -> dict[str, str]:
    return {
        **service_env(database_url, **settings),
        "MAILGUN_API_KEY": API_KEY,
        "COLUMNS": "200",
    }


def config_file(tmp_path: Path, api_base_url: str) -> Path:
    path = tmp_path / "mgwebhook.toml"
    path.write_text(
        f'[environments.production]\ndomain = "{DOMAIN}"\n'
        f'webhook_url = "https://hooks.example.com/v1/mailgun/webhook"\n'
        f'api_base_url = "{api_base_url}"\n',
        encoding="utf-8",
    )
    return path


async def representative_requests(service: ServiceProcess) -> list[str]:
    """Send one request for each outcome of the endpoint and return the response texts."""
    delivered = signed(fixture("delivered"))
    requests: list[tuple[bytes, str]] = [
        (json.dumps(delivered).encode(), "application/json"),
        (json.dumps(delivered).encode(), "application/json"),
        (json.dumps(signed(fixture("delivered"), key=OTHER_KEY)).encode(), "application/json"),
        (json.dumps(signed(fixture("delivered"), timestamp=1)).encode(), "application/json"),
        (
            json.dumps({"signature": delivered["signature"], "event-data": {}}).encode(),
            "application/json",
        ),
        (b"{not json", "application/json"),
        (b"{}", "text/plain"),
        (json.dumps(signed(["not", "an", "object"])).encode(), "application/json"),
        (json.dumps(signed(fixture("opened_no_headers"))).encode(), "application/json"),
        (b"x" * 5000, "application/json"),
        (urlencode(signature_block(SIGNING_KEY)).encode(), "application/x-www-form-urlencoded"),
    ]
    texts = []
    async with aiohttp.ClientSession() as session:
        for body, content_type in requests:
            async with session.post(
                service.webhook_url, data=body, headers={"Content-Type": content_type}
            ) as response:
                texts.append(f"{response.status} {await response.text()}")
        for path in ("/healthz", "/readyz", "/metrics", "/nowhere"):
            async with session.get(service.base_url + path) as response:
                texts.append(f"{response.status} {await response.text()}")
    return texts


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_service_and_commands_print_no_secret(database_url: str, tmp_path: Path):
    env = environment(
        database_url,
        MGWEBHOOK_LOGGING_LEVEL="DEBUG",
        MGWEBHOOK_SERVER_MAX_BODY_BYTES="4096",
        MGWEBHOOK_RECONCILE_INTERVAL_SECONDS="0",
    )
    engine = await prepare_database(database_url, env)
    await engine.dispose()
    service = ServiceProcess(tmp_path / "serve.log", env)
    captured: list[str] = []

    def cli(*arguments: str, extra: dict[str, str] | None = None) -> None:
        result = run_cli(list(arguments), {**env, **(extra or {})})
        captured.append(f"$ mgwebhook {' '.join(arguments)}\n{result.stdout}{result.stderr}")

    try:
        await service.start_and_wait()
        captured += await representative_requests(service)
        webhook_url = service.webhook_url
        dead_url = f"http://{HOST}:{free_port()}/v1/mailgun/webhook"
        await asyncio.to_thread(cli, "track", "document", "INV-1", FIXTURE_MESSAGE_ID)
        await asyncio.to_thread(cli, "send-test", "delivered", "--url", webhook_url)
        await asyncio.to_thread(cli, "send-test", "failed", "--legacy", "--url", webhook_url)
        await asyncio.to_thread(cli, "send-test", "delivered", "--url", dead_url)
        await asyncio.to_thread(cli, "events", "list", "--json")
        await asyncio.to_thread(cli, "events", "show", "1")
        await asyncio.to_thread(cli, "history", "document:INV-1")
        await asyncio.to_thread(cli, "serve", "--log-level", "LOUD")
        await asyncio.to_thread(
            cli,
            "db",
            "upgrade",
            extra={
                "MGWEBHOOK_DATABASE_URL": (
                    f"postgresql+asyncpg://postgres:{DATABASE_PASSWORD}@{HOST}:{free_port()}/x"
                )
            },
        )
        unreachable_api = config_file(tmp_path, f"http://{HOST}:{free_port()}")
        await asyncio.to_thread(
            cli,
            "register",
            "--env",
            "production",
            "--config",
            str(unreachable_api),
        )
    finally:
        service.stop()
    captured.append(service.output())

    everything = "\n".join(captured)
    assert secrets_in(everything) == []
    # The commands above did run their error paths.
    assert "could not connect to" in everything
    assert "Error:" in everything


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_database_outage_prints_no_password(database_url: str, tmp_path: Path):
    url = f"postgresql+asyncpg://postgres:{DATABASE_PASSWORD}@{HOST}:{free_port()}/mgwebhook"
    env = environment(url, MGWEBHOOK_LOGGING_LEVEL="DEBUG")
    service = ServiceProcess(tmp_path / "serve.log", env)
    body = json.dumps(json_webhook(SIGNING_KEY, event_data("delivered", "m@x"))).encode()
    texts = []
    try:
        await service.start_and_wait()
        async with aiohttp.ClientSession() as session:
            async with session.post(
                service.webhook_url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                texts.append(f"{response.status} {await response.text()}")
            async with session.get(service.base_url + "/readyz") as response:
                texts.append(f"{response.status} {await response.text()}")
            async with session.get(service.base_url + "/metrics") as response:
                texts.append(f"{response.status} {await response.text()}")
    finally:
        service.stop()
    assert texts[0].startswith("503 ")
    assert texts[1].startswith("503 ")
    assert secrets_in("\n".join(texts) + service.output()) == []


@pytest.fixture
def mailgun() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "DEFAULT_RETRY", RetryPolicy(base_delay=0.0, max_delay=0.0))


REGISTER_FAILURES = [
    pytest.param(httpx.Response(401, text="Forbidden"), id="key-rejected"),
    pytest.param(httpx.Response(403, json={"message": "Forbidden"}), id="no-permission"),
    pytest.param(httpx.Response(404, json={"message": "Domain not found"}), id="no-domain"),
    pytest.param(httpx.Response(500, text="<html>oops</html>"), id="server-error"),
    pytest.param(httpx.Response(200, text="not json"), id="invalid-json"),
    pytest.param(httpx.ConnectTimeout("timed out"), id="timeout"),
    pytest.param(httpx.ConnectError("connection refused"), id="network-error"),
]


@pytest.mark.parametrize("failure", REGISTER_FAILURES)
@pytest.mark.parametrize(
    "command", [["register", "--env", "production"], ["webhooks", "list", "--env", "production"]]
)
def test_register_errors_print_no_secret(mailgun, tmp_path, caplog, failure, command):
    caplog.set_level(logging.DEBUG)
    route = mailgun.get(f"{US_API}/v3/domains/{DOMAIN}/webhooks")
    if isinstance(failure, Exception):
        route.mock(side_effect=failure)
    else:
        route.mock(return_value=failure)
    path = config_file(tmp_path, US_API)
    result = CliRunner().invoke(
        cli_app,
        [*command, "--config", str(path)],
        env={
            "MAILGUN_API_KEY": API_KEY,
            "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY.decode(),
            "MGWEBHOOK_CONFIG": None,
            "COLUMNS": "200",
        },
    )
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output
    assert secrets_in(result.output) == []
    assert secrets_in(caplog.text) == []
    request = route.calls.last.request
    # The key went to Mailgun, in the Authorization header only.
    assert request.headers["Authorization"].startswith("Basic ")
    assert API_KEY not in str(request.url)
