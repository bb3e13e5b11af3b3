"""Shared fixtures: real databases (a SQLite file and, when configured, PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mgwebhook.config import DatabaseSettings, Settings
from mgwebhook.db.engine import create_engine, create_schema, normalise_database_url
from mgwebhook.db.schema import metadata
from mgwebhook.server.app import create_app

SIGNING_KEY = b"key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
OTHER_KEY = b"key-not-the-configured-one-000000000"

POSTGRES_URL_ENV = "MGWEBHOOK_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "MGWEBHOOK_TEST_REQUIRE_POSTGRES"


def _database_params() -> list[Any]:
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    ]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """URL of a PostgreSQL database owned by this test run, or None when not configured.

    Each run creates its own database on the configured server, so runs started
    at the same time on one server do not see each other's rows.
    """
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        yield None
        return
    name = f"mgwebhook_test_{os.getpid()}"
    asyncio.run(
        _execute_autocommit(url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    )
    yield make_url(url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_execute_autocommit(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute_autocommit(url: str, *statements: str) -> None:
    engine = create_async_engine(normalise_database_url(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=_database_params())
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> str:
    """URL of an empty database: a SQLite file, or this run's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mgwebhook.db'}"
    if postgres_url is None:
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(f"{POSTGRES_URL_ENV} is not set but {REQUIRE_POSTGRES_ENV} is")
        pytest.skip(f"{POSTGRES_URL_ENV} is not set")
    return postgres_url


async def reset_database(url: str) -> None:
    """Drop every mgwebhook table so each test starts from an empty schema."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                # Tables created by other tests (for example mapped subject tables).
                await connection.execute(text("DROP SCHEMA public CASCADE"))
                await connection.execute(text("CREATE SCHEMA public"))
            else:
                await connection.run_sync(metadata.drop_all)
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh schema of the parametrised database."""
    await reset_database(database_url)
    current = create_engine(database_url)
    await create_schema(current)
    yield current
    await current.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database=DatabaseSettings(url=database_url))


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> Callable[..., Any]:
    """Factory for a test client of a new app on the shared engine."""

    async def make(
        keys: list[bytes] | None = None, clock: Callable[[], float] | None = None, **changes: Any
    ) -> TestClient:
        app = create_app(
            settings,
            keys if keys is not None else [SIGNING_KEY],
            engine=engine,
            create_tables=False,
            clock=clock,
            reconcile=False,
        )
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """Undo the handlers that a command run in-process (such as `serve`) installs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
