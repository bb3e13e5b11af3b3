"""Checks that the configured subject tables have the columns mgwebhook needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, inspect
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
        problems.extend(_table_problems(inspector, subject, timestamps))
    return problems


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
    roles: list[tuple[str, Any, tuple[type, ...], str]] = [
        ("id", subject.id, _ID_TYPES[id_kind], f"{id_kind}"),
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
    python_type = subject.id.type.python_type
    return {str: "text", int: "integer"}.get(python_type, "uuid")
