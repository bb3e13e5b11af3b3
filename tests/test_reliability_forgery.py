"""Replay and forgery over HTTP: each attempt is 401 and changes no row.

The attacker here has captured real requests but not the signing key.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mgwebhook.config import WebhookSettings
from mgwebhook.retention import prune
from mgwebhook.samples import signature_block
from tests.conftest import OTHER_KEY, SIGNING_KEY
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    fixture,
    insert_document,
    post_json,
    signed,
    status_of,
)
from tests.reliability_support import snapshot

MAX_AGE = WebhookSettings().max_age_seconds
MAX_SKEW = WebhookSettings().max_future_skew_seconds
THIRD_KEY = b"key-of-another-mailgun-account-0000"


async def assert_unchanged_401(client: Any, engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Post `body`, check for 401 and an unchanged database, and return the response body."""
    before = await snapshot(engine)
    status, response = await post_json(client, body)
    assert status == 401, response
    assert response["ok"] is False
    assert await snapshot(engine) == before
    return response


@pytest.fixture
async def tracked(engine) -> None:
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)


async def test_captured_signature_on_other_body(client, engine, tracked):
    captured = signed(fixture("delivered"))
    assert await post_json(client, captured) == (200, {"ok": True})

    for name in ("complained", "failed_permanent", "failed_temporary", "opened_no_headers"):
        forged = {"signature": captured["signature"], "event-data": fixture(name)}
        response = await assert_unchanged_401(client, engine, forged)
        assert response["error"] == "token was already used by a different event"
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_signature_used_first_by_forger(client, engine, tracked):
    """A signature block seen in transit but not yet delivered carries any body to one row.

    The genuine post that arrives later is then refused, so the forgery is
    limited to one event per captured token. This records that limit.
    """
    genuine = signed(fixture("delivered"))
    forged = {"signature": genuine["signature"], "event-data": fixture("complained")}
    assert await post_json(client, forged) == (200, {"ok": True})
    await assert_unchanged_401(client, engine, genuine)


async def test_replay_after_max_age_is_401(make_client, engine, tracked):
    signed_at = int(time.time())
    body = signed(fixture("delivered"), timestamp=signed_at)
    current = await make_client(clock=lambda: signed_at)
    assert await post_json(current, body) == (200, {"ok": True})

    # At the edge of the window the token still exists, so a retry changes nothing
    # and another body is refused as a replay.
    at_edge = await make_client(clock=lambda: signed_at + MAX_AGE)
    assert await post_json(at_edge, body) == (200, {"ok": True})
    other = {"signature": body["signature"], "event-data": fixture("complained")}
    await assert_unchanged_401(at_edge, engine, other)

    later = await make_client(clock=lambda: signed_at + MAX_AGE + 1)
    response = await assert_unchanged_401(later, engine, body)
    assert "older than the maximum age" in response["error"]
    await assert_unchanged_401(later, engine, other)


async def test_prune_keeps_replayable_tokens(make_client, engine, tracked):
    signed_at = int(time.time())
    body = signed(fixture("delivered"), timestamp=signed_at)
    current = await make_client(clock=lambda: signed_at)
    assert await post_json(current, body) == (200, {"ok": True})
    other = {"signature": body["signature"], "event-data": fixture("complained")}

    at_edge = datetime.fromtimestamp(signed_at + MAX_AGE, UTC)
    result = await prune(engine, timedelta(seconds=1), MAX_AGE, at_edge)
    assert result.tokens_deleted == 0
    edge_client = await make_client(clock=lambda: signed_at + MAX_AGE)
    await assert_unchanged_401(edge_client, engine, other)

    # Once the token is deleted, its timestamp is too old to be accepted anyway.
    past_edge = datetime.fromtimestamp(signed_at + MAX_AGE + 2, UTC)
    result = await prune(engine, timedelta(seconds=1), MAX_AGE, past_edge)
    assert result.tokens_deleted == 1
    late_client = await make_client(clock=lambda: signed_at + MAX_AGE + 2)
    await assert_unchanged_401(late_client, engine, other)
    await assert_unchanged_401(late_client, engine, body)
    assert await status_of(engine, "INV-1") == "DELIVERED"


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(MAX_SKEW + 1, id="just-past-skew"),
        pytest.param(24 * 3600, id="one-day"),
        pytest.param(10**11, id="thousands-of-years"),
    ],
)
async def test_timestamp_far_in_future_is_401(make_client, engine, tracked, offset):
    now = int(time.time())
    client = await make_client(clock=lambda: now)
    body = signed(fixture("delivered"), timestamp=now + offset)
    await assert_unchanged_401(client, engine, body)


async def test_timestamp_with_thirteen_digits_is_401(client, engine, tracked):
    body = signed(fixture("delivered"), timestamp="1" + "0" * 12)
    response = await assert_unchanged_401(client, engine, body)
    assert "not integer Unix seconds" in response["error"]


@pytest.mark.parametrize(
    ("configured", "signing"),
    [
        pytest.param([SIGNING_KEY], OTHER_KEY, id="other-key"),
        pytest.param([SIGNING_KEY, OTHER_KEY], THIRD_KEY, id="none-of-two-keys"),
        pytest.param([OTHER_KEY], SIGNING_KEY, id="rotated-out-key"),
    ],
)
async def test_signature_of_unconfigured_key_is_401(
    make_client, engine, tracked, configured, signing
):
    client = await make_client(keys=configured)
    body = signed(fixture("delivered"), key=signing)
    response = await assert_unchanged_401(client, engine, body)
    assert response["error"] == "signature does not match any configured signing key"


async def test_both_rotation_keys_are_accepted(make_client, engine, tracked):
    client = await make_client(keys=[OTHER_KEY, SIGNING_KEY])
    assert await post_json(client, signed(fixture("delivered"), key=SIGNING_KEY)) == (
        200,
        {"ok": True},
    )
    assert await post_json(client, signed(fixture("complained"), key=OTHER_KEY)) == (
        200,
        {"ok": True},
    )
    assert await status_of(engine, "INV-1") == "COMPLAINED"


@pytest.mark.parametrize(
    ("signature_key", "parent_key"),
    [
        pytest.param(OTHER_KEY, THIRD_KEY, id="both-unknown"),
        pytest.param(None, THIRD_KEY, id="garbage-signature-unknown-parent"),
    ],
)
async def test_parent_signature_of_unknown_key_is_401(
    client, engine, tracked, signature_key, parent_key
):
    block = signature_block(signature_key or OTHER_KEY)
    if signature_key is None:
        block["signature"] = "0" * 64
    block["parent-signature"] = signature_block(
        parent_key, timestamp=block["timestamp"], token=block["token"]
    )["signature"]
    await assert_unchanged_401(
        client, engine, {"signature": block, "event-data": fixture("delivered")}
    )


@pytest.mark.parametrize(
    "alter",
    [
        pytest.param(lambda s: s[:-1], id="one-digit-short"),
        pytest.param(lambda s: s[:32], id="half-length"),
        pytest.param(lambda s: s[:1], id="one-digit"),
        pytest.param(lambda s: s.upper(), id="uppercase-hex"),
        pytest.param(lambda s: s + "0", id="one-digit-long"),
        pytest.param(lambda s: s + " ", id="trailing-space"),
        pytest.param(lambda s: s[::-1], id="reversed"),
        pytest.param(lambda s: "0x" + s, id="hex-prefix"),
    ],
)
async def test_altered_signature_is_401(client, engine, tracked, alter):
    body = signed(fixture("delivered"))
    original = body["signature"]["signature"]
    assert original == original.lower()
    body["signature"]["signature"] = alter(original)
    await assert_unchanged_401(client, engine, body)
    # The unaltered request still applies afterwards: the refused one left no token behind.
    body["signature"]["signature"] = original
    assert await post_json(client, body) == (200, {"ok": True})


async def test_altered_parent_signature_is_401(client, engine, tracked):
    parent = signature_block(SIGNING_KEY)
    block = signature_block(OTHER_KEY, timestamp=parent["timestamp"], token=parent["token"])
    block["parent-signature"] = parent["signature"].upper()
    body = {"signature": block, "event-data": fixture("delivered")}
    await assert_unchanged_401(client, engine, body)


async def test_swapped_token_or_timestamp_is_401(client, engine, tracked):
    first = signed(fixture("delivered"))
    second = signed(fixture("delivered"), timestamp=int(time.time()) - 60)
    swapped_token = copy.deepcopy(first)
    swapped_token["signature"]["token"] = second["signature"]["token"]
    swapped_timestamp = copy.deepcopy(first)
    swapped_timestamp["signature"]["timestamp"] = second["signature"]["timestamp"]
    for body in (swapped_token, swapped_timestamp):
        await assert_unchanged_401(client, engine, body)


async def test_form_post_with_json_signature_is_rejected(client, engine, tracked):
    """A JSON signature block pasted into a form field is not a form signature."""
    block = signature_block(SIGNING_KEY)
    response = await client.post(
        "/v1/mailgun/webhook",
        data={"signature": json.dumps(block), "event": "complained"},
    )
    assert response.status == 400
    assert await status_of(engine, "INV-1") == "SENT"
