"""Statements compiled once by SQLAlchemy and run on the session's driver connection.

In a profile of the SQLite ingest path, SQLAlchemy's handling of each
execution took about as long as SQLite's work. That path runs a few
statements per batch in one thread that holds the write lock, so it compiles
each statement once and hands it straight to the driver's cursor. Values still go through the column
types' own conversions, so the rows read and written are the same as through
SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class DriverStatement:
    """A statement as the driver takes it: SQL text and positional parameters."""

    sql: str
    # Parameter names in the order of their placeholders, with the conversion of each.
    parameters: tuple[tuple[str, Processor], ...]
    # Conversions of the result columns, in order.
    results: tuple[Processor, ...]

    @classmethod
    def compile(cls, statement: ClauseElement, dialect: Dialect) -> DriverStatement:
        """Compile a statement for a dialect with positional placeholders."""
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if compiled.positiontup is None:
            raise ValueError(
                f"dialect {dialect.name} uses named parameters ({dialect.paramstyle}); "
                "DriverStatement needs a positional style such as SQLite's or asyncpg's"
            )
        # One conversion per type, shared by every placeholder of that type.
        processors: dict[int, Processor] = {}
        parameters = []
        for name in compiled.positiontup:
            kind = compiled.binds[name].type
            if id(kind) not in processors:
                processors[id(kind)] = kind.dialect_impl(dialect).bind_processor(dialect)
            parameters.append((name, processors[id(kind)]))
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in getattr(statement, "exported_columns", ())
        )
        return cls(compiled.string, tuple(parameters), results)

    def values(self, named: Mapping[str, Any]) -> tuple[Any, ...]:
        """Return the statement's positional parameters from values by name."""
        return tuple(
            named[name] if process is None else process(named[name])
            for name, process in self.parameters
        )

    def fetch(self, session: Session, named: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement in the session's transaction and return its converted rows."""
        rows = _run(session, self.sql, self.values(named), many=False)
        if not any(self.results):
            return rows
        return [
            tuple(
                value if process is None else process(value)
                for value, process in zip(row, self.results, strict=True)
            )
            for row in rows
        ]

    def run_many(self, session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run the statement once per row of values, in the session's transaction."""
        _run(session, self.sql, [self.values(row) for row in rows], many=True)


def _run(session: Session, sql: str, parameters: Sequence[Any], *, many: bool) -> list[Any]:
    connection = session.connection()
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
            return []
        cursor.execute(sql, parameters)
        return list(cursor.fetchall()) if cursor.description else []
    except dialect.loaded_dbapi.Error as error:
        # Raised and handled as SQLAlchemy would: callers see one family of
        # errors, and a lost connection is discarded instead of reused.
        lost = dialect.is_disconnect(error, dbapi_connection, cursor)
        wrapped = DBAPIError.instance(
            sql,
            None,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=dialect,
        )
        if lost:
            connection.invalidate(wrapped)
        raise wrapped from error
    except BaseException as error:
        # After a timeout or a cancellation in the middle of a statement the
        # connection's state is unknown, so SQLAlchemy discards it; so does this.
        if isinstance(error, TimeoutError) or not isinstance(error, Exception):
            connection.invalidate(error)
        raise
    finally:
        cursor.close()
