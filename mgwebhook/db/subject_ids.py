"""Subject ids typed by a user: conversion to the id column's type and lookup conditions.

Nothing here runs a statement. On SQLite, a "uuid" id column contains text in
whatever spelling the application wrote, while SQLAlchemy's `Uuid` type binds
the canonical text without its dashes, 32 lower-case hex digits. A lookup there
compares the column, without that conversion, with every spelling in
`uuid_spellings`, so it still searches the primary key index.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Dialect, String, Uuid, type_coerce

from mgwebhook.db.schema import SubjectTable

# The range of a BIGINT, the type of an "integer" id column.
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_subject_id(subject: SubjectTable, text: str) -> Any:
    """Convert an id typed by a user to a value of the subject table's id type.

    A UUID becomes its canonical text (dashed, lower case), the text that
    reading the column returns and that the audit trail stores. Raises
    ValueError naming the id when it cannot be one.
    """
    column_type = subject.id.type
    if isinstance(column_type, Uuid):
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise ValueError(
                f"{subject.kind} id {text!r} is not a valid UUID; "
                "pass 32 hex digits, with or without dashes"
            ) from None
    if column_type.python_type is int:
        # int() would also take spaces, underscores and non-ASCII digits.
        if not _INTEGER.fullmatch(text):
            raise ValueError(
                f"{subject.kind} id {text!r} is not an integer; pass the id as stored in the table"
            )
        number = int(text)
        if not BIGINT_MIN <= number <= BIGINT_MAX:
            raise ValueError(
                f"{subject.kind} id {text!r} is outside the range of a 64-bit integer id; "
                "pass the id as stored in the table"
            )
        return number
    return text


def subject_key(subject: SubjectTable, text: str) -> Any | None:
    """Return `text` as a value of the subject table's id type, or None if it cannot be one.

    Mapped tables may have integer or UUID ids, and comparing such a column with
    text that is not a valid id fails on PostgreSQL. A caller that tries one
    text as an id of several tables skips the tables it does not fit.
    """
    try:
        return parse_subject_id(subject, text)
    except ValueError:
        return None


def stored_id_column(subject: SubjectTable, dialect: Dialect) -> ColumnElement[Any]:
    """Return the id column to select, read as stored when it is UUID text.

    SQLite keeps any text in such a column, and reading text that is not a
    UUID through the `Uuid` type raises ValueError. `stored_id_text` turns the
    value read into the text the audit trail uses.
    """
    if stores_uuid_as_text(subject, dialect):
        return type_coerce(subject.id, String()).label(subject.id.key)
    return subject.id


def stored_id_text(subject: SubjectTable, dialect: Dialect, value: Any) -> str:
    """Return an id read through `stored_id_column` as the audit trail writes it.

    UUID text becomes dashed lower case. Text in a UUID column that is not a
    UUID keeps its spelling, and so do ids of the other types.
    """
    if not stores_uuid_as_text(subject, dialect):
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)


def uuid_spellings(canonical: str) -> list[str]:
    """Return the spellings of a UUID that an id column on SQLite may contain.

    These are 32 hex digits and the dashed form, each in lower and in upper case.
    """
    digits = canonical.replace("-", "")
    return [digits, digits.upper(), canonical, canonical.upper()]


def stores_uuid_as_text(subject: SubjectTable, dialect: Dialect) -> bool:
    """Return whether the id column is a "uuid" id that the database keeps as text."""
    column_type = subject.id.type
    if not isinstance(column_type, Uuid):
        return False
    return not (dialect.supports_native_uuid and column_type.native_uuid)


def ids_condition(
    subject: SubjectTable, keys: Iterable[Any], dialect: Dialect
) -> ColumnElement[bool]:
    """Return a condition matching the rows whose id is one of `keys`, from `parse_subject_id`."""
    values = list(keys)
    if not stores_uuid_as_text(subject, dialect):
        return subject.id.in_(values)
    spellings = [spelling for value in values for spelling in uuid_spellings(value)]
    # String() leaves the bound text unchanged, unlike the column's Uuid type.
    return type_coerce(subject.id, String()).in_(spellings)
