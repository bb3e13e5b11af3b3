"""Conversion of typed subject ids and the conditions that find them; no database."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.dialects import postgresql, sqlite

from mgwebhook.db.schema import subject_table
from mgwebhook.db.subject_ids import (
    ids_condition,
    parse_subject_id,
    stored_id_text,
    stores_uuid_as_text,
    subject_key,
    uuid_spellings,
)

UUID = "320c48de-0d9d-4e45-91b0-c90b9f54e927"


def table(id_type: str):
    return subject_table("document", "docs", id_type=id_type, managed=False, target=MetaData())


@pytest.mark.parametrize(
    "typed",
    [UUID, UUID.upper(), UUID.replace("-", ""), UUID.replace("-", "").upper()],
)
def test_uuid_parses_to_canonical_text(typed):
    assert parse_subject_id(table("uuid"), typed) == UUID


@pytest.mark.parametrize(
    ("id_type", "typed", "message"),
    [
        (
            "uuid",
            "INV-7",
            "document id 'INV-7' is not a valid UUID; pass 32 hex digits, with or without dashes",
        ),
        (
            "integer",
            "seven",
            "document id 'seven' is not an integer; pass the id as stored in the table",
        ),
        (
            "integer",
            str(2**63),
            f"document id '{2**63}' is outside the range of a 64-bit integer id; "
            "pass the id as stored in the table",
        ),
    ],
)
def test_invalid_id_is_named(id_type, typed, message):
    with pytest.raises(ValueError) as raised:
        parse_subject_id(table(id_type), typed)
    assert str(raised.value) == message
    assert subject_key(table(id_type), typed) is None


@pytest.mark.parametrize("typed", ["1_000", " 8 ", "\u0663", "8.0", "+"])
def test_loose_integer_text_is_rejected(typed):
    with pytest.raises(ValueError) as raised:
        parse_subject_id(table("integer"), typed)
    assert str(raised.value) == (
        f"document id {typed!r} is not an integer; pass the id as stored in the table"
    )


@pytest.mark.parametrize(
    ("id_type", "dialect", "stored", "expected"),
    [
        ("uuid", sqlite.dialect(), UUID.replace("-", "").upper(), UUID),
        ("uuid", sqlite.dialect(), "not-a-uuid", "not-a-uuid"),
        ("text", sqlite.dialect(), UUID.replace("-", ""), UUID.replace("-", "")),
        ("integer", sqlite.dialect(), 7, "7"),
        ("uuid", postgresql.dialect(), UUID, UUID),
    ],
)
def test_stored_id_text(id_type, dialect, stored, expected):
    assert stored_id_text(table(id_type), dialect, stored) == expected


def test_integer_and_text_ids_parse():
    assert parse_subject_id(table("integer"), "-9223372036854775808") == -(2**63)
    assert parse_subject_id(table("integer"), "007") == 7
    assert parse_subject_id(table("text"), " INV-7") == " INV-7"


def test_uuid_spellings():
    assert uuid_spellings(UUID) == [
        "320c48de0d9d4e4591b0c90b9f54e927",
        "320C48DE0D9D4E4591B0C90B9F54E927",
        "320c48de-0d9d-4e45-91b0-c90b9f54e927",
        "320C48DE-0D9D-4E45-91B0-C90B9F54E927",
    ]


def test_uuid_is_text_on_sqlite_only():
    assert stores_uuid_as_text(table("uuid"), sqlite.dialect()) is True
    assert stores_uuid_as_text(table("uuid"), postgresql.dialect()) is False
    assert stores_uuid_as_text(table("text"), sqlite.dialect()) is False


def compiled(id_type: str, keys: list, dialect) -> tuple[str, list]:
    """Return the WHERE clause of a lookup by `keys` as the dialect renders it, and its values."""
    docs = table(id_type)
    statement = select(docs.id).where(ids_condition(docs, keys, dialect))
    query = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    return str(query).split("WHERE ")[1], list(query.params.values())


def test_sqlite_condition_binds_every_spelling():
    where, values = compiled("uuid", [UUID], sqlite.dialect())
    # No CAST around the column, so SQLite searches the primary key index.
    assert where == "docs.id IN (?, ?, ?, ?)"
    assert values == uuid_spellings(UUID)


def test_postgresql_condition_binds_the_uuid():
    where, values = compiled("uuid", [UUID], postgresql.dialect())
    assert where == "docs.id IN (%(id_1_1)s::UUID)"
    assert values == [UUID]


def test_integer_condition_binds_the_numbers():
    where, values = compiled("integer", [7, 8], sqlite.dialect())
    assert where == "docs.id IN (?, ?)"
    assert values == [7, 8]
