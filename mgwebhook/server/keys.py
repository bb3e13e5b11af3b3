"""Typed keys for the state the application holds."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mgwebhook.config import Settings

SETTINGS = web.AppKey("settings", Settings)
SIGNING_KEYS = web.AppKey("signing_keys", list[bytes])
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
# Returns Unix seconds; tests replace it to check the freshness window.
CLOCK = web.AppKey("clock", Callable[[], float])
