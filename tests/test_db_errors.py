"""The one-line descriptions of database errors, on the real database."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mgwebhook.db.errors import describe


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "SELECT 3000000000::int4",
            "NumericValueOutOfRangeError: integer out of range",
        ),
        (
            "SELECT * FROM no_such_table",
            'ProgrammingError: relation "no_such_table" does not exist',
        ),
    ],
)
async def test_postgresql_error_is_named(engine, database_url, statement, expected):
    if not database_url.startswith("postgresql"):
        pytest.skip("the asyncpg adapter's error classes exist on PostgreSQL only")

    with pytest.raises(DBAPIError) as raised:
        async with engine.connect() as connection:
            await connection.execute(text(statement))

    assert describe(raised.value) == expected


async def test_sqlite_error_is_named(engine, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's error text")

    with pytest.raises(DBAPIError) as raised:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))

    assert describe(raised.value) == "OperationalError: no such table: no_such_table"
