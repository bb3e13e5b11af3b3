"""Parsing of time options: durations such as `90d` and points in time such as `2h` or ISO 8601."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

_DURATION = re.compile(r"\s*([0-9]+)\s*([smhdw])\s*", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

DURATION_FORMS = "a number with a unit s, m, h, d or w, such as 90d or 12h"


def parse_duration(value: str) -> timedelta:
    """Return the duration written as a whole number and a unit, such as `90d`."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise typer.BadParameter(f"{value!r} is not a duration; use {DURATION_FORMS}")
    amount, unit = match.groups()
    try:
        return timedelta(**{_UNITS[unit.lower()]: int(amount)})
    except OverflowError:
        raise typer.BadParameter(f"duration {value!r} is too large") from None


def parse_time(value: str, now: datetime) -> datetime:
    """Return an aware UTC time from ISO 8601 or from a duration before `now` (`2h`, `7d`).

    ISO times without an offset are taken as UTC.
    """
    if _DURATION.fullmatch(value):
        return now - parse_duration(value)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither an ISO 8601 time (2024-05-01T12:00:00Z) nor a "
            f"relative time ({DURATION_FORMS}, meaning that long ago)"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(value: datetime | None) -> str:
    """Return an aware or UTC-naive time as `2024-05-01 12:00:00Z`, or `-` for None."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso_time(value: datetime | None) -> str | None:
    """Return an aware or UTC-naive time in ISO 8601 with a UTC offset, for JSON output."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
