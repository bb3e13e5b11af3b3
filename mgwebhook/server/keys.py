"""Typed keys for the state the application holds."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mgwebhook.config import Settings
from mgwebhook.server.metrics import WebhookMetrics
from mgwebhook.server.writer import BatchWriter

SETTINGS = web.AppKey("settings", Settings)
SIGNING_KEYS = web.AppKey[list[bytes]]("signing_keys")
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey[async_sessionmaker[AsyncSession]]("sessions")
# Returns Unix seconds; tests replace it to check the freshness window.
CLOCK = web.AppKey[Callable[[], float]]("clock")
WRITER = web.AppKey[BatchWriter]("writer")
METRICS = web.AppKey("metrics", WebhookMetrics)
