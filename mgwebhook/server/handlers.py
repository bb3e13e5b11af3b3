"""The webhook handler: read, verify, parse, ingest in one transaction, respond."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import hdrs, web

from mgwebhook import payloads, signature
from mgwebhook.errors import (
    BodyTimeout,
    DatabaseUnavailable,
    MalformedPayload,
    NotAuthentic,
    PayloadTooLarge,
    ServiceOverloaded,
    WebhookRejected,
)
from mgwebhook.ingest import IngestResult, Outcome, VerifiedWebhook
from mgwebhook.logs import recipient_for_log
from mgwebhook.server.keys import CLOCK, METRICS, SETTINGS, SIGNING_KEYS, WRITER

logger = logging.getLogger("mgwebhook.webhook")

# Mailgun retries anything but 200 and 406 for about 8 hours, whatever this header contains.
RETRY_AFTER_SECONDS = 30
TOKEN_PREFIX_LENGTH = 8
# The body of every 200, encoded once.
OK_BODY = b'{"ok": true}'


@dataclass
class _Trace:
    """Fields of the one log line written per webhook request."""

    token: str = "-"
    event: str = "-"
    message_id: str = "-"
    outcome: str = "-"
    # Mailgun event type and recipient, or None before an event is extracted.
    event_type: str | None = None
    recipient: str | None = None


async def receive_webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    trace = _Trace()
    try:
        response = await _process(request, trace)
    except Exception:
        # Nothing was committed, so 503 makes Mailgun retry once the fault is fixed.
        logger.exception("webhook failed unexpectedly (token %s)", trace.token)
        trace.outcome = "internal-error"
        response = _unavailable("internal error; the request can be retried")
    latency_seconds = time.perf_counter() - started
    _log_webhook(request.app, trace, response.status, latency_seconds)
    request.app[METRICS].observe_webhook(
        trace.outcome, response.status, trace.event_type, latency_seconds
    )
    return response


def _log_webhook(app: web.Application, trace: _Trace, status: int, latency_seconds: float) -> None:
    """Write the one INFO line of a webhook request; `extra=` carries its fields for JSON logs."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "token": trace.token,
        "event": trace.event,
        "message_id": trace.message_id,
        "outcome": str(trace.outcome),
        "status": status,
        "latency_ms": round(latency_seconds * 1000, 1),
    }
    message = "webhook token=%s event=%s message_id=%s outcome=%s status=%d latency_ms=%.1f"
    recipient = recipient_for_log(trace.recipient, app[SETTINGS].logging.log_recipients)
    if recipient is not None:
        fields["recipient"] = recipient
        message += " recipient=%s"
    logger.info(message, *fields.values(), extra=fields)


async def _process(request: web.Request, trace: _Trace) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    try:
        limit = settings.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"body of {request.content_length} bytes is over {limit} bytes")
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        payloads.media_type(content_type)
        body = await _read_body(request, limit, settings.server.body_timeout_seconds)

        payload = payloads.parse_body(content_type, body)
        trace.token = payload.signature.token[:TOKEN_PREFIX_LENGTH]
        clock = app.get(CLOCK, time.time)
        keys: list[bytes] = app[SIGNING_KEYS]
        signed_at = signature.verify(
            payload.signature,
            keys,
            clock(),
            settings.webhook.max_age_seconds,
            settings.webhook.max_future_skew_seconds,
        )
        webhook = VerifiedWebhook(payload, datetime.fromtimestamp(signed_at, UTC))
        result = await app[WRITER].submit(webhook)
    except WebhookRejected as rejection:
        trace.outcome = rejection.reason
        if isinstance(rejection, NotAuthentic):
            logger.warning(
                "webhook rejected: %s (token %s, remote %s)",
                rejection.message,
                trace.token,
                request.remote,
            )
        return web.json_response({"ok": False, "error": rejection.message}, status=rejection.status)
    except DatabaseUnavailable as error:
        trace.outcome = "database-unavailable"
        logger.error("webhook not stored, database unavailable: %s (token %s)", error, trace.token)
        return _unavailable("database unavailable; retry later")
    except ServiceOverloaded as error:
        trace.outcome = "overloaded"
        logger.warning("webhook not queued: %s (token %s)", error, trace.token)
        return _unavailable("too many webhooks waiting; retry later")

    return _respond(result, trace)


async def _read_body(request: web.Request, limit: int, timeout_seconds: float) -> bytes:
    try:
        if request.content.is_eof():
            # The whole body has arrived, the usual case for a webhook, so no timer is needed.
            return await request.read()
        async with asyncio.timeout(timeout_seconds):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body is over {limit} bytes") from None
    except TimeoutError:
        raise BodyTimeout(f"body was not received within {timeout_seconds:g} s") from None
    except web.RequestPayloadError:
        raise MalformedPayload(
            "body cannot be read: its chunked framing or Content-Encoding is invalid"
        ) from None
    except ConnectionResetError:
        # The client is gone and gets no response, but the log line still records the request.
        raise MalformedPayload("connection closed before the whole body arrived") from None


def _respond(result: IngestResult, trace: _Trace) -> web.Response:
    trace.outcome = result.outcome
    if result.event is not None:
        trace.event = result.event.event
        trace.event_type = result.event.event
        trace.message_id = result.event.message_id or "-"
        trace.recipient = result.event.recipient
    if result.outcome is Outcome.UNPROCESSABLE:
        # Mailgun does not retry a 406. The raw payload is kept for inspection.
        return web.json_response({"ok": False, "error": result.detail}, status=406)
    return web.Response(body=OK_BODY, content_type="application/json")


def _unavailable(message: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error": message},
        status=503,
        headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
    )
