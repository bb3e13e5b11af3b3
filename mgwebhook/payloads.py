"""Parsing of webhook bodies into one normalised event; pure, no I/O.

Two formats reach the endpoint. Current webhooks post JSON::

    {"signature": {"timestamp", "token", "signature"[, "parent-signature"]},
     "event-data": {...}}

Legacy webhooks (retired by Mailgun in 2023) and route forwards post
urlencoded or multipart forms with ``timestamp``, ``token`` and ``signature``
as top-level fields. When a form field repeats, the last value is Mailgun's.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal
from urllib.parse import parse_qsl

from mgwebhook.errors import MalformedPayload, UnsupportedMediaType, UnusableEvent
from mgwebhook.signature import SignatureBlock

PayloadFormat = Literal["json", "form"]

# Characters stripped from both ends of a message id. Mailgun's send API returns
# the id in angle brackets, while webhooks carry it without them.
MESSAGE_ID_STRIP = " \t\r\n<>"

_SIGNATURE_FIELDS = ("timestamp", "token", "signature")
# RFC 5322 limits a header line to 998 characters, so no real Message-Id is
# longer. Longer values could also exceed PostgreSQL's btree entry limit (2704 bytes).
MAX_MESSAGE_ID_LENGTH = 998
# Mailgun's event ids are about 22 characters. A longer one is stored as a hash,
# so that it fits the unique index of the audit trail.
MAX_EVENT_ID_LENGTH = 200
MAX_SIGNATURE_FIELD_LENGTH = 512
# PostgreSQL text cannot hold NUL, and no database driver can encode a lone
# surrogate (a JSON escape such as "\ud800" decodes to one), so both are
# replaced with U+FFFD the same way on every database.
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
_MAX_FORM_FIELDS = 10_000


@dataclass(frozen=True)
class Payload:
    """A parsed webhook body: its signature block and everything else."""

    format: PayloadFormat
    signature: SignatureBlock
    fields: dict[str, Any]
    # Text kept for inspection and replay: the JSON body, or the form fields as JSON.
    raw_text: str

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the unsigned content, equal for a retry of the same post."""
        if self.format == "json":
            content = {k: v for k, v in self.fields.items() if k != "signature"}
        else:
            content = {k: v for k, v in self.fields.items() if k not in _SIGNATURE_FIELDS}
        canonical = json.dumps(content, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class MailgunEvent:
    """The fields of one Mailgun event that mgwebhook records."""

    event: str
    event_key: str
    message_id: str | None
    recipient: str | None
    severity: str | None
    reason: str | None
    delivery_code: int | None
    occurred_at: datetime | None
    legacy: bool = False


def media_type(content_type: str | None) -> Literal["json", "urlencoded", "multipart"]:
    """Return the kind of body announced by a Content-Type header, or raise 415."""
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    if essence == "application/json" or (
        essence.startswith("application/") and essence.endswith("+json")
    ):
        return "json"
    if essence == "application/x-www-form-urlencoded":
        return "urlencoded"
    if essence == "multipart/form-data":
        return "multipart"
    announced = essence or "none"
    raise UnsupportedMediaType(
        f"content type {announced!r} is not supported; send application/json, "
        "application/x-www-form-urlencoded or multipart/form-data"
    )


def parse_body(content_type: str | None, body: bytes) -> Payload:
    """Parse a webhook body and its signature block; raise 415 or 400 errors."""
    kind = media_type(content_type)
    if kind == "json":
        return _parse_json(body)
    if kind == "urlencoded":
        fields = _parse_urlencoded(body)
    else:
        fields = _parse_multipart(content_type or "", body)
    return _form_payload(fields)


def parse_stored(payload_format: str, raw_text: str) -> Payload:
    """Parse a payload kept by `Payload.raw_text`, for replaying a stored event."""
    if payload_format == "json":
        return _parse_json(raw_text.encode("utf-8"))
    fields = json.loads(raw_text)
    if not isinstance(fields, dict):
        raise MalformedPayload("stored form payload is not a JSON object")
    return _form_payload(fields)


def normalise_message_id(value: Any) -> str | None:
    """Return a message id without angle brackets or surrounding whitespace."""
    if not isinstance(value, str):
        return None
    stripped = _storable_text(value).strip(MESSAGE_ID_STRIP)
    return stripped or None


def extract_event(payload: Payload) -> MailgunEvent:
    """Return the event of an authentic payload, or raise UnusableEvent."""
    event = _json_event(payload) if payload.format == "json" else _legacy_event(payload)
    if event.message_id is not None and len(event.message_id) > MAX_MESSAGE_ID_LENGTH:
        raise UnusableEvent(
            f"message id is {len(event.message_id)} characters long; "
            f"no real message id is longer than {MAX_MESSAGE_ID_LENGTH}"
        )
    return event


def _parse_json(body: bytes) -> Payload:
    try:
        text = body.decode("utf-8-sig")
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise MalformedPayload(f"body is not valid UTF-8 JSON: {_describe(error)}") from None
    if not isinstance(document, dict):
        raise MalformedPayload("JSON body must be an object with 'signature' and 'event-data'")

    block = document.get("signature")
    if not isinstance(block, dict):
        raise MalformedPayload("JSON body has no 'signature' object")
    signature = _signature_block(block, "signature.")
    payload = Payload("json", signature, document, text)
    _check_fingerprint(payload)
    return payload


def _parse_urlencoded(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError as error:
        raise MalformedPayload(f"form body cannot be parsed: {_describe(error)}") from None
    return dict(pairs)  # the last value of a repeated field wins


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    if "boundary=" not in content_type.lower():
        raise MalformedPayload("multipart body has no boundary in its Content-Type")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode(
        "latin-1", "replace"
    )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise MalformedPayload("multipart body cannot be parsed")

    fields: dict[str, Any] = {}
    for count, part in enumerate(message.iter_parts()):
        if count >= _MAX_FORM_FIELDS:
            raise MalformedPayload(f"multipart body has more than {_MAX_FORM_FIELDS} parts")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = part.get_filename()
        if filename is not None:
            fields[name] = f"<file {filename}>"
            continue
        content = part.get_payload(decode=True)
        charset = part.get_content_charset() or "utf-8"
        try:
            fields[name] = content.decode(charset, "replace") if isinstance(content, bytes) else ""
        except LookupError:
            fields[name] = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
    return fields


def _form_payload(fields: dict[str, Any]) -> Payload:
    signature = _signature_block(fields, "")
    # Multipart names and charsets can decode to lone surrogates, which cannot be stored.
    raw_text = _storable_text(json.dumps(fields, ensure_ascii=False, sort_keys=True))
    payload = Payload("form", signature, fields, raw_text)
    _check_fingerprint(payload)
    return payload


def _signature_block(fields: dict[str, Any], prefix: str) -> SignatureBlock:
    values = {}
    for name in _SIGNATURE_FIELDS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and name == "timestamp":
            value = str(value)
        if not isinstance(value, str) or not value:
            raise MalformedPayload(f"'{prefix}{name}' is missing or not a string")
        # Mailgun sends digits and hex. Anything else could not be hashed (a lone
        # surrogate), stored (NUL on PostgreSQL) or logged safely (a line break).
        if not _is_printable_ascii(value):
            raise MalformedPayload(f"'{prefix}{name}' is invalid: it must be printable ASCII")
        # Mailgun's tokens are 50 characters; a far longer one would pass
        # PostgreSQL's btree entry limit as the token table's primary key.
        if len(value) > MAX_SIGNATURE_FIELD_LENGTH:
            raise MalformedPayload(
                f"'{prefix}{name}' is {len(value)} characters long; "
                f"the limit is {MAX_SIGNATURE_FIELD_LENGTH}"
            )
        values[name] = value
    parent = fields.get("parent-signature")
    # A parent signature that is not printable ASCII cannot match, so it is dropped.
    if not isinstance(parent, str) or not _is_printable_ascii(parent):
        parent = None
    return SignatureBlock(
        timestamp=values["timestamp"],
        token=values["token"],
        signature=values["signature"],
        parent_signature=parent,
    )


def _is_printable_ascii(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable()


def _check_fingerprint(payload: Payload) -> None:
    # Deeply nested JSON can be decoded but not encoded again within the recursion limit.
    try:
        payload.fingerprint  # noqa: B018
    except (ValueError, RecursionError) as error:
        raise MalformedPayload(f"body cannot be processed: {_describe(error)}") from None


def _json_event(payload: Payload) -> MailgunEvent:
    data = payload.fields.get("event-data")
    if not isinstance(data, dict):
        raise UnusableEvent("'event-data' is missing or not an object")
    name = _text(data.get("event"))
    if name is None:
        raise UnusableEvent("'event-data.event' is missing or not a string")

    message = _object(data.get("message"))
    headers = _object(message.get("headers"))
    status = _object(data.get("delivery-status"))
    message_id = normalise_message_id(headers.get("message-id"))
    event_id = _text(data.get("id"))
    if event_id is not None and len(event_id) > MAX_EVENT_ID_LENGTH:
        event_id = "sha256:" + hashlib.sha256(event_id.encode("utf-8")).hexdigest()
    occurred_at = _unix_time(data.get("timestamp"))
    event = name.lower()
    return MailgunEvent(
        event=event,
        event_key=event_id or _derived_key(event, message_id, data.get("timestamp"), data),
        message_id=message_id,
        recipient=_text(data.get("recipient")),
        severity=_lower(data.get("severity")),
        reason=_lower(data.get("reason")),
        delivery_code=_integer(status.get("code")),
        occurred_at=occurred_at,
    )


def _legacy_event(payload: Payload) -> MailgunEvent:
    fields = payload.fields
    name = _text(fields.get("event"))
    if name is None:
        # A route forward posts the message itself: signed, but not an event.
        raise UnusableEvent("form post has no 'event' field; it is not an event webhook")

    message_id = normalise_message_id(_field_ci(fields, "message-id"))
    if message_id is None:
        message_id = normalise_message_id(_header_from_list(fields.get("message-headers")))
    event = name.lower()
    return MailgunEvent(
        event=event,
        event_key=_derived_key(event, message_id, fields.get("timestamp"), fields),
        message_id=message_id,
        recipient=_text(fields.get("recipient")),
        severity=None,
        reason=_lower(fields.get("reason")),
        delivery_code=_integer(fields.get("code")),
        occurred_at=_unix_time(fields.get("timestamp")),
        legacy=True,
    )


def _derived_key(
    event: str, message_id: str | None, timestamp: Any, content: dict[str, Any]
) -> str:
    """Key for an event without a Mailgun id: legacy posts never carried one."""
    unsigned = {k: v for k, v in content.items() if k not in ("token", "signature")}
    canonical = json.dumps(
        [event, message_id, str(timestamp), unsigned], sort_keys=True, ensure_ascii=True
    )
    return "derived:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()[:40]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return _storable_text(value).strip() or None
    return None


def _storable_text(value: str) -> str:
    return _UNSTORABLE_CHARACTERS.sub("\ufffd", value)


def _lower(value: Any) -> str | None:
    text = _text(value)
    return text.lower() if text is not None else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) < value < 2**31 else None
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) <= 9:
            return int(digits)
    return None


def _unix_time(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    # Reject values outside what datetime represents (years 1970 to 9999).
    if not math.isfinite(seconds) or not 0 <= seconds < 253_402_300_800:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _field_ci(fields: dict[str, Any], name: str) -> Any:
    for key, value in fields.items():
        if key.lower() == name:
            return value
    return None


def _header_from_list(value: Any) -> Any:
    """Find Message-Id in legacy `message-headers`, a JSON list of [name, value] pairs."""
    if not isinstance(value, str):
        return None
    try:
        headers = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(headers, list):
        return None
    for pair in headers:
        if isinstance(pair, list) and len(pair) == 2 and str(pair[0]).lower() == "message-id":
            return pair[1]
    return None


def _describe(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
