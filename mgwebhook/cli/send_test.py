"""`mgwebhook send-test`: post a signed sample webhook to a running mgwebhook."""

from __future__ import annotations

import json
import secrets
from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer

from mgwebhook import samples
from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, fail, settings_from
from mgwebhook.config import Settings, load_signing_keys
from mgwebhook.errors import ConfigError
from mgwebhook.server import WEBHOOK_PATH

REQUEST_TIMEOUT_SECONDS = 10.0

# Addresses a server listens on that a client cannot send to as they are.
_ANY_ADDRESS = {"", "0.0.0.0", "::"}


class SampleEvent(StrEnum):
    delivered = "delivered"
    failed = "failed"
    complained = "complained"
    opened = "opened"


class SampleSeverity(StrEnum):
    permanent = "permanent"
    temporary = "temporary"


def send_test(
    event: Annotated[SampleEvent, typer.Argument(help="Mailgun event type to send.")],
    severity: Annotated[
        SampleSeverity,
        typer.Option(help="Severity of a failed event; legacy webhooks only had permanent ones."),
    ] = SampleSeverity.permanent,
    message_id: Annotated[
        str | None,
        typer.Option(
            help="Message id the event is for, to update a tracked row (default: a new random id).",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Webhook URL to post to (default: http://HOST:PORT/v1/mailgun/webhook "
            "with the host and port of the server settings).",
            show_default=False,
        ),
    ] = None,
    legacy: Annotated[
        bool, typer.Option("--legacy", help="Send the legacy form-encoded format instead of JSON.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Post a realistic Mailgun webhook, signed with the configured signing key.

    Prints the HTTP status and the response body, and exits with 1 unless the
    status is 2xx.
    """
    settings = settings_from(config)
    try:
        # With several keys configured, the first one listed signs.
        key = load_signing_keys(settings)[0]
    except ConfigError as error:
        fail(str(error))
    target = url or default_url(settings)
    message_id = message_id or f"{secrets.token_hex(8)}.send-test@{samples.SAMPLE_DOMAIN}"

    request: dict[str, Any]
    if legacy:
        request = {"data": samples.legacy_form(key, _legacy_event(event, severity), message_id)}
    else:
        data = samples.event_data(event.value, message_id, severity=severity.value)
        request = {"json": samples.json_webhook(key, data)}

    try:
        response = httpx.post(target, timeout=REQUEST_TIMEOUT_SECONDS, **request)
    except httpx.ConnectError:
        fail(
            f"could not connect to {target}: no server is running at that URL; "
            "start one with `mgwebhook serve` or pass --url"
        )
    except httpx.TimeoutException:
        fail(f"{target} did not answer within {REQUEST_TIMEOUT_SECONDS:.0f} s")
    except httpx.HTTPError as error:
        fail(f"request to {target} failed: {error}; check --url")

    render.send_test_response(
        event.value, message_id, target, response.status_code, _body_text(response)
    )
    if not response.is_success:
        raise typer.Exit(1)


def default_url(settings: Settings) -> str:
    """Return the webhook URL of the server configured in [server]."""
    host = settings.server.host
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}{WEBHOOK_PATH}"


def _legacy_event(event: SampleEvent, severity: SampleSeverity) -> str:
    if event is not SampleEvent.failed:
        return event.value
    if severity is SampleSeverity.temporary:
        fail(
            "legacy webhooks have no temporary failure event; "
            "drop --legacy or use --severity permanent"
        )
    # Legacy webhooks reported a permanent failure as `bounced`.
    return "bounced"


def _body_text(response: httpx.Response) -> str:
    try:
        return json.dumps(response.json(), ensure_ascii=False)
    except ValueError:
        return response.text
