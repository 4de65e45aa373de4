"""Constant statements run straight on SQLite's DBAPI cursor, compiled once per column set.

Why hand-written: ingest runs ten small statements per stored instance. Even for a statement
object built once, SQLAlchemy's ``Connection.execute`` spends ~25 us per call on the compiled
cache look-up, parameter construction, event dispatch and result set-up, against ~3 us for
SQLite to run it (issue 14: a quarter of the index write's CPU). SQLAlchemy offers no public
"run this compiled statement with these values" path, so this keeps what it would do for these
statements: the SQL text and parameter order come from SQLAlchemy's own compiler, each value
goes through the column type's own bind processor (e.g. DateTime to text on SQLite), and a
DBAPI error is raised as the same SQLAlchemy exception class (IntegrityError, OperationalError)
the callers and ``Index.write`` handle. On PostgreSQL (server round trips dominate there), and
for any statement whose compiled form needs values the caller did not give (column defaults),
``conn.execute`` runs it as before.

Rows come back as SQLite stores them: no result processors run, so a DateTime column reads as
text and a Boolean as 0/1. Select only integer and text columns through it (the ingest look-ups
do), or read such columns through ``conn.execute``.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable

# (SQL text, per positional parameter: its name, bind processor and constant value if any)
_Spec = tuple[str, tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]]


class Prepared:
    """One constant statement (select, insert, update) and its compiled SQLite forms."""

    __slots__ = ("_row", "_specs", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement: Any = statement  # a select, insert or update (all compile)
        exported = getattr(statement, "exported_columns", None)  # selected or RETURNING
        names = list(exported.keys()) if exported is not None else []
        # Rows read by attribute like SQLAlchemy's Row (callers use both paths).
        self._row: Any = namedtuple("Row", names, rename=True) if names else None
        self._specs: dict[tuple[str, ...], _Spec | None] = {}

    def _spec(self, conn: Connection, keys: tuple[str, ...]) -> _Spec | None:
        if keys in self._specs:
            return self._specs[keys]
        dialect = conn.dialect
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=list(keys))
        names = compiled.positiontup or []
        # Values the statement carries itself (a literal such as ``id == 1``); anything else
        # the caller did not give (a column default, a callable) is left to SQLAlchemy.
        constants = {
            name: compiled.binds[name].value
            for name in names
            if name not in keys
            and compiled.binds[name].value is not None
            and compiled.binds[name].callable is None
        }
        spec: _Spec | None = None
        if set(names) <= {*keys, *constants} and not compiled.literal_execute_params:
            processors = []
            for name in names:
                impl = compiled.binds[name].type.dialect_impl(dialect)
                processors.append((name, impl.bind_processor(dialect), constants.get(name)))
            spec = (str(compiled), tuple(processors))
        self._specs[keys] = spec
        return spec

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Execute with ``params``; a cursor-like result (``fetchone``, ``lastrowid`` on
        SQLite; SQLAlchemy's CursorResult elsewhere)."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params)
        spec = self._spec(conn, tuple(params))
        if spec is None:
            return conn.execute(self.statement, params)
        sql, processors = spec
        values = tuple(
            (params[name] if constant is None else constant)
            if process is None
            else process(params[name] if constant is None else constant)
            for name, process, constant in processors
        )
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, values)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc
        return _Result(cursor, self._row)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first row (attribute access by column name) or None."""
        result = self.run(conn, params)
        return result.fetchone() if isinstance(result, _Result) else result.first()

    def insert_pk(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT; the integer primary key of the new row."""
        result = self.run(conn, params)
        if isinstance(result, _Result):
            return int(result.cursor.lastrowid)  # type: ignore[arg-type]
        return int(result.inserted_primary_key[0])


class _Result:
    __slots__ = ("_row", "cursor")

    def __init__(self, cursor: sqlite3.Cursor, row: Any) -> None:
        self.cursor = cursor
        self._row = row

    def fetchone(self) -> Any:
        found = self.cursor.fetchone()
        self.cursor.close()
        if found is None or self._row is None:
            return found
        return self._row._make(found)
