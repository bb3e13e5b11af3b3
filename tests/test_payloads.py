"""Body parsing and event extraction with plain values."""

from __future__ import annotations

import json

import pytest

from mgwebhook.errors import MalformedPayload, UnsupportedMediaType, UnusableEvent
from mgwebhook.payloads import extract_event, normalise_message_id, parse_body, parse_stored
from tests.helpers import fixture

SIGNATURE = {"timestamp": "1700000000", "token": "tok", "signature": "ab" * 32}


def json_body(data: object, **extra: object) -> bytes:
    return json.dumps({"signature": SIGNATURE, "event-data": data, **extra}).encode()


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("Application/JSON", "json"),
        ("application/vnd.api+json", "json"),
    ],
)
def test_json_content_types(content_type, kind):
    assert parse_body(content_type, json_body({})).format == kind


@pytest.mark.parametrize("content_type", ["text/plain", "", None, "application/octet-stream"])
def test_unsupported_content_types(content_type):
    with pytest.raises(UnsupportedMediaType):
        parse_body(content_type, b"{}")


def test_json_signature_block():
    payload = parse_body("application/json", json_body({}))
    assert payload.signature.timestamp == "1700000000"
    assert payload.signature.token == "tok"
    assert payload.signature.parent_signature is None


def test_integer_timestamp_is_kept_as_text():
    body = json.dumps({"signature": {**SIGNATURE, "timestamp": 1700000000}}).encode()
    assert parse_body("application/json", body).signature.timestamp == "1700000000"


def test_fingerprint_ignores_signature_and_formatting():
    one = parse_body("application/json", json_body({"event": "delivered", "id": "x"}))
    other_sig = {**SIGNATURE, "token": "other"}
    two = parse_body(
        "application/json",
        json.dumps(
            {"event-data": {"id": "x", "event": "delivered"}, "signature": other_sig}, indent=3
        ).encode(),
    )
    three = parse_body("application/json", json_body({"event": "complained", "id": "x"}))
    assert one.fingerprint == two.fingerprint
    assert one.fingerprint != three.fingerprint


def test_urlencoded_last_value_wins():
    body = (
        b"token=first&timestamp=1&signature=s1"
        b"&token=second&timestamp=1700000000&signature=s2&event=delivered"
    )
    payload = parse_body("application/x-www-form-urlencoded", body)
    assert payload.signature.token == "second"
    assert payload.signature.timestamp == "1700000000"
    assert payload.signature.signature == "s2"


def test_multipart_fields_and_files():
    body = (
        b'--XYZ\r\nContent-Disposition: form-data; name="token"\r\n\r\nfirst\r\n'
        b'--XYZ\r\nContent-Disposition: form-data; name="token"\r\n\r\ntok\r\n'
        b'--XYZ\r\nContent-Disposition: form-data; name="timestamp"\r\n\r\n1700000000\r\n'
        b'--XYZ\r\nContent-Disposition: form-data; name="signature"\r\n\r\nsig\r\n'
        b'--XYZ\r\nContent-Disposition: form-data; name="subject"\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n'
        b'--XYZ\r\nContent-Disposition: form-data; name="attachment-1"; filename="a.pdf"\r\n'
        b"Content-Type: application/pdf\r\n\r\n%PDF\x00\xff\r\n"
        b"--XYZ--\r\n"
    )
    payload = parse_body("multipart/form-data; boundary=XYZ", body)
    assert payload.signature.token == "tok"
    assert payload.fields["subject"] == "Grüße"
    assert payload.fields["attachment-1"] == "<file a.pdf>"


def test_multipart_without_boundary_is_malformed():
    with pytest.raises(MalformedPayload):
        parse_body("multipart/form-data", b"--XYZ--")


def test_delivered_fixture_event():
    event = extract_event(parse_body("application/json", json_body(fixture("delivered"))))
    assert event.event == "delivered"
    assert event.event_key == "CPgfbmQMTCKtHW6uIWtuVe"
    assert event.message_id == "20130503182626.18666.16540@mg.example.com"
    assert event.recipient == "alice@example.com"
    assert event.delivery_code == 250
    assert event.occurred_at is not None
    assert event.occurred_at.timestamp() == pytest.approx(1521472262.908181)


def test_legacy_message_id_from_headers_list():
    fields = {**fixture("legacy_dropped"), **SIGNATURE}
    payload = parse_stored("form", json.dumps(fields))
    event = extract_event(payload)
    assert event.legacy is True
    assert event.event == "dropped"
    assert event.message_id == "20130503182626.18666.16540@mg.example.com"
    assert event.delivery_code == 605
    assert event.event_key.startswith("derived:")


def test_event_without_id_gets_stable_derived_key():
    data = fixture("delivered")
    del data["id"]
    first = extract_event(parse_body("application/json", json_body(data)))
    second = extract_event(
        parse_body("application/json", json_body(data, signature={**SIGNATURE, "token": "other"}))
    )
    assert first.event_key == second.event_key
    assert first.event_key.startswith("derived:")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="null"),
        pytest.param([], id="list"),
        pytest.param({"event": 5}, id="event-number"),
        pytest.param({"event": "  "}, id="event-blank"),
    ],
)
def test_unusable_event_data(data):
    payload = parse_body("application/json", json_body(data))
    with pytest.raises(UnusableEvent):
        extract_event(payload)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@b>", "a@b"),
        ("  <a@b>  ", "a@b"),
        ("a@b", "a@b"),
        ("\t<a@b>\n", "a@b"),
        ("<>", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_normalise_message_id(value, expected):
    assert normalise_message_id(value) == expected


def test_stored_json_round_trip():
    original = parse_body("application/json", json_body(fixture("complained")))
    restored = parse_stored(original.format, original.raw_text)
    assert restored.fingerprint == original.fingerprint
    assert extract_event(restored) == extract_event(original)


def test_overlong_token_is_malformed():
    body = json.dumps({"signature": {**SIGNATURE, "token": "a" * 513}}).encode()
    with pytest.raises(MalformedPayload) as error:
        parse_body("application/json", body)
    assert str(error.value) == "'signature.token' is 513 characters long; the limit is 512"
