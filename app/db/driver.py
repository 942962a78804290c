"""The statements on every turn's path, run on the database driver's own connection (Postgres: asyncpg).

Why by hand: around each statement SQLAlchemy's `AsyncConnection` costs ~0.3 ms of CPU here (the
connection object and its execution options, greenlet hops, the compiled-cache lookup, the result
machinery): the plain turn start measured 0.46 ms of CPU and 0.81 ms of wall time through it against 0.18
and 0.50 on the driver with the same SQL, Postgres's own time unchanged. An API key's lookup, the turn's
start and its final write are on every turn's path, the first two before its first token.

What SQLAlchemy still does: the statement is a Core construct compiled once by its dialect (the same SQL
and the same bind processors as `execute` would use), the connection is checked out of and back into its
pool (checkout events, pool timeouts, invalidation), and a failure is raised as its `execute` raises it
(`IntegrityError`, `OperationalError` with `connection_invalidated`, …), so callers and the API's error
handlers see no difference. No library runs a SQLAlchemy statement on a driver connection without
`Connection.execute` around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.util import greenlet_spawn

from app import coroutines

_Processor = Callable[[Any], Any] | None
# Work of the caller's to run while a statement runs in the database (see `DriverConnection.fetchrow`).
Meanwhile = Callable[[], None] | None


class DriverStatement:
    """A Core statement compiled once for a dialect (numbered parameters, as asyncpg takes them): its SQL, its
    parameters in order with their bind processors, and its result columns with their result processors."""

    __slots__ = ("_binds", "_dialect", "_results", "_types", "keys", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        if (
            compiled.positiontup is None
            or compiled.literal_execute_params
            or compiled.post_compile_params
            or compiled.escaped_bind_names
        ):
            raise ValueError("a driver statement takes plain numbered parameters, rendered once, not per call")
        self.sql: str = compiled.string
        processors: dict[str, _Processor] = compiled._bind_processors
        fixed = compiled.construct_params(_check=False)
        # (parameter key, whether the value is fixed, the fixed value, processor): a literal's is known now.
        binds: list[tuple[str, bool, Any, _Processor]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            processor = processors.get(name)
            if bind.required or bind.callable is not None:
                binds.append((bind.key, False, None, processor))
            else:
                value = fixed[name]
                binds.append((name, True, processor(value) if processor else value, None))
        self._binds = tuple(binds)
        self.keys: tuple[str, ...] = tuple(entry[0] for entry in compiled._result_columns)
        self._types = tuple(entry[3] for entry in compiled._result_columns)
        self._dialect = dialect
        # Some result processors depend on the column's type as the database reports it (asyncpg's NUMERIC by
        # its OID): known after the statement's first preparation (`resolve_results`).
        self._results: tuple[_Processor, ...] | None = None

    @property
    def results_resolved(self) -> bool:
        return self._results is not None

    def resolve_results(self, type_codes: Sequence[Any]) -> None:
        self._results = tuple(
            type_._cached_result_processor(self._dialect, code)
            for type_, code in zip(self._types, type_codes, strict=True)
        )

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        """The driver's positional arguments for named `parameters`."""
        arguments = []
        for name, is_fixed, value, processor in self._binds:
            if is_fixed:
                arguments.append(value)
            else:
                given = parameters[name]
                # Also for None: a JSON column's processor writes it as JSON null, as `execute` does.
                arguments.append(processor(given) if processor is not None else given)
        return arguments

    def row(self, record: Sequence[Any]) -> dict[str, Any]:
        """A result row by column name, each value through its column type's result processor."""
        assert self._results is not None
        return {
            key: processor(value) if processor is not None else value
            for key, processor, value in zip(self.keys, self._results, record, strict=True)
        }


class CompiledFor:
    """A statement's `DriverStatement` for each dialect it runs on, compiled at its first use."""

    __slots__ = ("_by_dialect", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: dict[type[Dialect], DriverStatement] = {}

    def on(self, dialect: Dialect) -> DriverStatement:
        compiled = self._by_dialect.get(type(dialect))
        if compiled is None:
            compiled = self._by_dialect[type(dialect)] = DriverStatement(self.statement, dialect)
        return compiled


class DriverConnection:
    """A pooled connection's driver connection, running `DriverStatement`s, each in its own transaction (the
    connection is checked out outside any: asyncpg then runs a statement in autocommit). Every statement on a
    turn's path is one statement on purpose: a transaction of several costs a round trip for each, and BEGIN
    and COMMIT two more."""

    __slots__ = ("_dialect", "_pooled")

    def __init__(self, pooled: PoolProxiedConnection, dialect: Dialect) -> None:
        self._pooled = pooled
        self._dialect = dialect

    async def fetchrow(
        self, statement: CompiledFor, parameters: Mapping[str, Any], *, meanwhile: Meanwhile = None
    ) -> dict[str, Any] | None:
        """The statement's first row by column name (None when it returned none). `meanwhile` runs once the
        statement is on its way to the database, while it runs there, instead of before or after it."""
        compiled = statement.on(self._dialect)
        arguments = compiled.arguments(parameters)
        driver: Any = self._pooled.driver_connection
        try:
            if meanwhile is not None and compiled.results_resolved:
                # Stepped by hand: its first step writes the statement to the socket, then the caller's work runs
                # while the database runs the statement, and no loop pass is waited for in between.
                sending = coroutines.start(driver.fetchrow(compiled.sql, *arguments))
                try:
                    meanwhile()
                finally:
                    record = await sending if isinstance(sending, coroutines.Resumed) else sending
            elif compiled.results_resolved:
                record = await driver.fetchrow(compiled.sql, *arguments)
            else:
                # Once per statement and process: prepared on its own to learn the result types it reports.
                prepared = await driver.prepare(compiled.sql)
                compiled.resolve_results([attribute.type.oid for attribute in prepared.get_attributes()])
                record = await prepared.fetchrow(*arguments)
                if meanwhile is not None:
                    meanwhile()
        except Exception as error:
            raise await self._as_sqlalchemy_error(error, compiled.sql, arguments) from error
        except BaseException:
            # Cancelled mid-statement: the connection's protocol state is unknown; as SQLAlchemy does, drop it.
            await greenlet_spawn(self._pooled.invalidate)
            raise
        return None if record is None else compiled.row(record)

    async def _as_sqlalchemy_error(self, error: Exception, sql: str, arguments: list[Any]) -> Exception:
        """`error` as `Connection.execute` would raise it, the connection invalidated if it broke."""
        adapted: Any = self._pooled.dbapi_connection
        if adapted is not None:
            try:
                adapted._handle_exception(error)  # raises the DBAPI-level error SQLAlchemy's adapter maps it to
            except Exception as translated:
                error = translated
        dialect = self._dialect
        dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        invalidated = isinstance(error, dbapi_error) and dialect.is_disconnect(error, adapted, None)  # type: ignore[arg-type]
        if not invalidated and adapted is not None:
            invalidated = bool(adapted._connection.is_closed())
        if invalidated:
            await greenlet_spawn(self._pooled.invalidate, error)
        if not isinstance(error, dbapi_error):
            return error  # not the driver's (OSError, a timeout): raised as it is, as SQLAlchemy does
        return DBAPIError.instance(
            sql,
            arguments,
            error,
            dbapi_error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=dialect,
        )


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[DriverConnection]:
    """A connection from `engine`'s pool for `DriverStatement`s, back in the pool (or closed, if it broke)
    afterwards."""
    pooled = await engine.raw_connection()
    try:
        yield DriverConnection(pooled, engine.dialect)
    finally:
        # Returning it may close it (an invalidated connection), which awaits the driver: in a greenlet.
        await greenlet_spawn(pooled.close)
