"""HMAC and freshness checks with plain values."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from mgwebhook.errors import SignatureMismatch, StaleTimestamp
from mgwebhook.signature import SignatureBlock, check_timestamp, compute_signature, verify

KEY = b"key-abc"
NOW = 1_700_000_000


def block(key: bytes = KEY, timestamp: str = str(NOW), token: str = "t" * 50) -> SignatureBlock:
    return SignatureBlock(timestamp, token, compute_signature(key, timestamp, token))


def test_signature_is_hmac_of_timestamp_then_token():
    expected = hmac.new(KEY, b"1700000000abc", hashlib.sha256).hexdigest()
    assert compute_signature(KEY, "1700000000", "abc") == expected


def test_valid_block_returns_timestamp():
    assert verify(block(), [KEY], NOW, 43200, 300) == NOW


def test_second_key_matches():
    assert verify(block(), [b"old", KEY], NOW, 43200, 300) == NOW


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda s: s.upper(), id="uppercase-hex"),
        pytest.param(lambda s: s[:-1], id="truncated"),
        pytest.param(lambda s: s + "0", id="extended"),
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: "é" * 64, id="non-ascii"),
    ],
)
def test_altered_signature_is_rejected(signature):
    good = block()
    altered = SignatureBlock(good.timestamp, good.token, signature(good.signature))
    with pytest.raises(SignatureMismatch):
        verify(altered, [KEY], NOW, 43200, 300)


def test_other_key_is_rejected():
    with pytest.raises(SignatureMismatch):
        verify(block(key=b"other"), [KEY], NOW, 43200, 300)


def test_parent_signature_matches():
    parent = block()
    child = SignatureBlock(
        parent.timestamp, parent.token, block(key=b"sub").signature, parent.signature
    )
    assert verify(child, [KEY], NOW, 43200, 300) == NOW


def test_timestamp_is_hashed_as_received():
    # "01700000000" and "1700000000" are the same second but different signed text.
    signed = block(timestamp="1700000000")
    moved = SignatureBlock("01700000000", signed.token, signed.signature)
    with pytest.raises(SignatureMismatch):
        verify(moved, [KEY], NOW, 43200, 300)


@pytest.mark.parametrize(
    ("timestamp", "accepted"),
    [
        pytest.param(str(NOW - 43200), True, id="exactly-max-age"),
        pytest.param(str(NOW - 43201), False, id="past-max-age"),
        pytest.param(str(NOW + 300), True, id="exactly-max-skew"),
        pytest.param(str(NOW + 301), False, id="past-max-skew"),
        pytest.param("17e8", False, id="exponent"),
        pytest.param("-5", False, id="negative"),
        pytest.param("١٧٠٠٠٠٠٠٠٠", False, id="arabic-digits"),
        pytest.param("", False, id="empty"),
    ],
)
def test_timestamp_window(timestamp, accepted):
    if accepted:
        assert check_timestamp(timestamp, NOW, 43200, 300) == int(timestamp)
    else:
        with pytest.raises(StaleTimestamp):
            check_timestamp(timestamp, NOW, 43200, 300)


def test_signature_checked_before_freshness():
    stale_forgery = block(key=b"other", timestamp=str(NOW - 10**6))
    with pytest.raises(SignatureMismatch):
        verify(stale_forgery, [KEY], NOW, 43200, 300)
