"""Verification of Mailgun's webhook signature block; pure, the clock is passed in.

Mailgun signs ``timestamp + token`` (no separator) with HMAC-SHA256 under the
webhook signing key and sends the lowercase hex digest. Events of a subaccount
also carry ``parent-signature``, the same HMAC under the primary account's key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mgwebhook.errors import SignatureMismatch, StaleTimestamp

_INTEGER_SECONDS = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class SignatureBlock:
    """The signed fields of a webhook post, exactly as received."""

    timestamp: str
    token: str
    signature: str
    parent_signature: str | None = None


def compute_signature(key: bytes, timestamp: str, token: str) -> str:
    """Return the lowercase hex HMAC-SHA256 of `timestamp + token` under `key`."""
    message = (timestamp + token).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verify_signature(block: SignatureBlock, keys: Sequence[bytes]) -> None:
    """Raise SignatureMismatch unless a key produced `signature` or `parent-signature`.

    Every key is compared in constant time, so the time taken does not reveal
    which key or how many leading characters matched.
    """
    candidates = [block.signature.encode("utf-8")]
    if block.parent_signature:
        candidates.append(block.parent_signature.encode("utf-8"))

    matched = False
    for key in keys:
        expected = compute_signature(key, block.timestamp, block.token).encode("ascii")
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureMismatch("signature does not match any configured signing key")


def check_timestamp(timestamp: str, now: float, max_age: int, max_future_skew: int) -> int:
    """Return the signed timestamp in Unix seconds, or raise StaleTimestamp.

    The window is hours long on purpose: Mailgun retries for about 8 hours and a
    retry carries the original signature block, so a minutes-long window would
    reject Mailgun's own retries. Replays inside the window are stopped by the
    token store instead.
    """
    if not _INTEGER_SECONDS.fullmatch(timestamp):
        raise StaleTimestamp(f"timestamp {timestamp[:20]!r} is not integer Unix seconds")
    seconds = int(timestamp)
    if now - seconds > max_age:
        raise StaleTimestamp(f"timestamp {seconds} is older than the maximum age of {max_age} s")
    if seconds - now > max_future_skew:
        raise StaleTimestamp(f"timestamp {seconds} is more than {max_future_skew} s in the future")
    return seconds


def verify(
    block: SignatureBlock,
    keys: Sequence[bytes],
    now: float,
    max_age: int,
    max_future_skew: int,
) -> int:
    """Check the signature, then the freshness; return the signed timestamp in seconds."""
    verify_signature(block, keys)
    return check_timestamp(block.timestamp, now, max_age, max_future_skew)
