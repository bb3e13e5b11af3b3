"""Checks that the configured subject tables have the columns mgwebhook needs.

On PostgreSQL it also checks that a table with rows has planner statistics:
without them the message id lookup can read the whole table for each batch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, inspect, select, text
from sqlalchemy import types as sqltypes
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.errors import translate_errors
from mgwebhook.db.schema import SUBJECT_TABLES, SubjectTable

_TEXT = (sqltypes.String,)
_ID_TYPES = {
    "text": (sqltypes.String,),
    "integer": (sqltypes.Integer,),
    "uuid": (sqltypes.Uuid, sqltypes.String),
}


async def check_subject_tables(engine: AsyncEngine) -> list[str]:
    """Return one sentence per problem with the subject tables; an empty list when usable."""
    async with translate_errors(), engine.connect() as connection:
        return await connection.run_sync(_problems)


def _problems(connection: Connection) -> list[str]:
    inspector = inspect(connection)
    # SQLite has no timestamp type: a column declared TIMESTAMP WITH TIME ZONE
    # reflects as NUMERIC and stores what SQLAlchemy writes all the same.
    timestamps = (
        (sqltypes.DateTime, sqltypes.Numeric, sqltypes.String)
        if connection.dialect.name == "sqlite"
        else (sqltypes.DateTime,)
    )
    problems: list[str] = []
    for subject in SUBJECT_TABLES.values():
        found = _table_problems(inspector, subject, timestamps)
        if not found and connection.dialect.name == "postgresql":
            found = _statistics_problems(connection, subject)
        problems.extend(found)
    return problems


# A table with fewer rows is cheap to read whole, statistics or not.
STATISTICS_MIN_ROWS = 1000


def _statistics_problems(connection: Connection, subject: SubjectTable) -> list[str]:
    """Return a problem when a PostgreSQL table has many rows but was never analyzed."""
    table = subject.table
    sample = select(subject.id).limit(STATISTICS_MIN_ROWS).subquery()
    rows = connection.scalar(select(text("count(*)")).select_from(sample))
    if (rows or 0) < STATISTICS_MIN_ROWS:
        return []
    # The quoted name finds the table through the search path, as PostgreSQL
    # does for mgwebhook's own statements.
    quoted = connection.dialect.identifier_preparer.format_table(table)
    analyzed = connection.scalar(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_stats s "
            "JOIN pg_namespace n ON n.nspname = s.schemaname "
            "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.tablename "
            "WHERE c.oid = to_regclass(:table))"
        ),
        {"table": quoted},
    )
    if analyzed:
        return []
    name = f"{table.schema}.{table.name}" if table.schema else table.name
    return [
        f"table {name!r} has at least {STATISTICS_MIN_ROWS} rows but no planner statistics, "
        f"so PostgreSQL may read all of it for each batch of webhooks; run: ANALYZE {quoted}"
    ]


def _table_problems(
    inspector: Any, subject: SubjectTable, timestamps: tuple[type, ...]
) -> list[str]:
    table = subject.table
    name = f"{table.schema}.{table.name}" if table.schema else table.name
    if not inspector.has_table(table.name, schema=table.schema):
        return [f"table {name!r} for {subject.kind}s does not exist"]

    found = {
        column["name"]: column["type"]
        for column in inspector.get_columns(table.name, schema=table.schema)
    }
    id_kind = _id_kind(subject)
    id_types = _ID_TYPES[id_kind]
    if id_kind == "uuid" and inspector.dialect.name == "postgresql":
        # PostgreSQL rejects comparing a text id column with the uuid values that
        # mgwebhook binds (operator does not exist: text = uuid).
        id_types = (sqltypes.Uuid,)
    roles: list[tuple[str, Any, tuple[type, ...], str]] = [
        ("id", subject.id, id_types, f"{id_kind}"),
        ("message id", subject.message_id, _TEXT, "text"),
        ("status", subject.status, _TEXT, "text"),
    ]
    if subject.status_updated_at is not None:
        roles.append(("status timestamp", subject.status_updated_at, timestamps, "timestamp"))

    problems = []
    for role, column, accepted, expected in roles:
        if column.key not in found:
            known = ", ".join(sorted(found))
            problems.append(
                f"column {name}.{column.key} ({subject.kind} {role}) does not exist "
                f"(columns: {known})"
            )
        elif not isinstance(found[column.key], accepted):
            problems.append(
                f"column {name}.{column.key} ({subject.kind} {role}) has type "
                f"{found[column.key]}; expected {expected}"
            )
    return problems


def _id_kind(subject: SubjectTable) -> str:
    # A "uuid" id is a Uuid(as_uuid=False), whose python_type is str.
    if isinstance(subject.id.type, sqltypes.Uuid):
        return "uuid"
    python_type = subject.id.type.python_type
    return {str: "text", int: "integer"}.get(python_type, "uuid")
