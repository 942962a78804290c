"""Turns, their ledger rows, and the runners' heartbeats."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    String,
    Table,
    and_,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.db.driver import CompiledFor, DriverConnection, Meanwhile
from app.db.models import (
    TURN_IN_FLIGHT_STATUSES,
    TURN_OPEN_STATUSES,
    ChatSession,
    Message,
    RunnerHeartbeat,
    Turn,
    UsageRecord,
    User,
    UserMonthlySpend,
)
from app.repositories.pagination import Order, Page, paginate
from app.repositories.sessions import SessionForTurn

# The tables behind the mapped classes, for Core statements on the hot paths (no ORM unit of work).
TURNS = cast(Table, Turn.__table__)
MESSAGES = cast(Table, Message.__table__)
SESSIONS = cast(Table, ChatSession.__table__)
LEDGER = cast(Table, UsageRecord.__table__)
SPEND = cast(Table, UserMonthlySpend.__table__)
USERS = cast(Table, User.__table__)

# Statements on the path of every turn are built once: building one (coercing each value into a bind
# parameter) costs more than running it from SQLAlchemy's compiled cache. Values come at execution.
INSERT_TURN = insert(TURNS)
INSERT_MESSAGE = insert(MESSAGES)
COUNT_SESSION_TURN = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("session_key"))
    .values(turn_count=SESSIONS.c.turn_count + 1, last_turn_at=bindparam("at"), updated_at=bindparam("at"))
)
# The SET clause comes from the parameters' names (the turn's columns).
# The statuses as plain (not "expanding") parameters, so that it also runs as an executemany.
FINISH_TURN = update(TURNS).where(
    TURNS.c.id == bindparam("turn_key"), TURNS.c.status.in_([literal(status) for status in TURN_IN_FLIGHT_STATUSES])
)
ADD_SESSION_COST = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("session_key"))
    .values(
        last_turn_at=bindparam("at"),
        total_cost_usd=SESSIONS.c.total_cost_usd + bindparam("cost", type_=SESSIONS.c.total_cost_usd.type),
    )
)
TOUCH_SESSION = update(SESSIONS).where(SESSIONS.c.id == bindparam("session_key")).values(last_turn_at=bindparam("at"))


async def get_owned_turn(db: AsyncSession, *, user_id: str, session_id: str, turn_id: str) -> Turn | None:
    statement = (
        select(Turn)
        .join(ChatSession, ChatSession.id == Turn.session_id)
        .where(
            Turn.id == turn_id,
            Turn.session_id == session_id,
            Turn.user_id == user_id,
            ChatSession.deleted_at.is_(None),
        )
    )
    turn: Turn | None = await db.scalar(statement)
    return turn


async def get_turn(db: AsyncSession, turn_id: str) -> Turn | None:
    return await db.get(Turn, turn_id, populate_existing=True)


async def list_turns(db: AsyncSession, *, session_id: str, limit: int, after: str | None, order: Order) -> Page[Turn]:
    return await paginate(
        db, select(Turn).where(Turn.session_id == session_id), Turn.id, limit=limit, after=after, order=order
    )


async def find_by_idempotency_key(db: AsyncSession, *, user_id: str, key: str) -> Turn | None:
    turn: Turn | None = await db.scalar(select(Turn).where(Turn.user_id == user_id, Turn.idempotency_key == key))
    return turn


async def find_open(db: AsyncSession, *, session_id: str) -> Turn | None:
    """The session's turn that is running or waiting for tool outputs, if any."""
    statement = select(Turn).where(Turn.session_id == session_id, Turn.status.in_(TURN_OPEN_STATUSES))
    turn: Turn | None = await db.scalar(statement)
    return turn


async def resume_waiting_turn(db: AsyncSession, *, turn_id: str, runner_id: str) -> bool:
    result = await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status == "requires_action")
        .values(
            status="in_progress",
            runner_id=runner_id,
            required_action=None,
            pending_tool_outputs=None,
            cancel_requested_at=None,
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def cancel_waiting_turn(db: AsyncSession, *, turn_id: str, at: dt.datetime) -> bool:
    result = await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status == "requires_action")
        .values(status="cancelled", required_action=None, pending_tool_outputs=None, completed_at=at)
    )
    return bool(getattr(result, "rowcount", 0))


_TURN_START_COLUMNS = (
    "id",
    "session_id",
    "user_id",
    "status",
    "input",
    "request",
    "metadata",
    "output_text",
    "response_ids",
    "idempotency_key",
    "request_fingerprint",
    "runner_id",
    "created_at",
)
_MESSAGE_COLUMNS = ("id", "session_id", "turn_id", "role", "content", "status", "created_at")


def _counted_session(which: ColumnElement[bool]) -> Any:
    """A start statement's CTE counting the turn on its session."""
    return (
        update(SESSIONS)
        .where(which)
        .values(
            turn_count=SESSIONS.c.turn_count + 1,
            last_turn_at=bindparam("turn_created_at"),
            updated_at=bindparam("turn_created_at"),
        )
        .returning(SESSIONS.c.id)
        .cte("counted_session")
    )


def _start_turn_in_one_statement() -> Any:
    """Postgres: the turn, its user message and the session's counters as one statement (data-modifying
    CTEs), one round trip instead of three on the path before the first token. Constraints (the one open turn
    per session, the message's foreign key) are checked at the statement's end as for separate statements."""
    new_turn = (
        insert(TURNS)
        .values({column: bindparam(f"turn_{column}") for column in _TURN_START_COLUMNS})
        .returning(TURNS.c.id)
        .cte("new_turn")
    )
    new_message = (
        insert(MESSAGES)
        .values({column: bindparam(f"message_{column}") for column in _MESSAGE_COLUMNS})
        .returning(MESSAGES.c.id)
        .cte("new_message")
    )
    counted = _counted_session(SESSIONS.c.id == bindparam("turn_session_id"))
    # One row each: joined on TRUE (a cross join the cartesian-product linter does not flag).
    joined = new_turn.join(new_message, true()).join(counted, true())
    return select(new_turn.c.id, new_message.c.id, counted.c.id).select_from(joined)


START_TURN_POSTGRES = _start_turn_in_one_statement()
START_TURN_ON_DRIVER = CompiledFor(START_TURN_POSTGRES)


def _start_parameters(turn: Turn, user_message: dict[str, Any]) -> dict[str, Any]:
    """The bind parameters of a start statement: the turn's columns as `turn_…`, the message's as `message_…`."""
    parameters = {f"turn_{key}": value for key, value in _turn_row(turn).items()}
    parameters.update({f"message_{key}": user_message[key] for key in _MESSAGE_COLUMNS})
    return parameters


def _guarded_start_parameters(turn: Turn, user_message: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A `_guarded_start` statement's parameters: the message's turn id comes from the inserted turn."""
    parameters = _start_parameters(turn, user_message)
    del parameters["message_turn_id"]
    parameters.update(more, user_key=turn.user_id)
    return parameters


def _turn_row(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.id,
        "session_id": turn.session_id,
        "user_id": turn.user_id,
        "status": turn.status,
        "input": turn.input,
        "request": turn.request,
        "metadata": turn.metadata_,
        "output_text": turn.output_text,
        "response_ids": turn.response_ids,
        "idempotency_key": turn.idempotency_key,
        "request_fingerprint": turn.request_fingerprint,
        "runner_id": turn.runner_id,
        "created_at": turn.created_at,
    }


@dataclass(frozen=True, slots=True)
class PlainStart:
    """What `start_plain_turn` found: the session (None: not the user's, or deleted) and whether it started."""

    session: SessionForTurn | None
    started: bool


_JSON_NULL = cast_(literal("null"), JSONB)


def _typed_parameter(table: Table, column: str, prefix: str) -> Any:
    """A start statement's parameter for `table.column`, typed: in an INSERT … SELECT Postgres cannot infer it."""
    return bindparam(f"{prefix}_{column}", type_=table.c[column].type)


def _guarded_start(turn_values: list[Any], source: Any, guard: Any) -> list[Any]:
    """The CTEs of a guarded start: insert the turn (its values selected from `source` where `guard` holds),
    its user message and the session's count. Returns the result's columns saying how many rows each wrote:
    the inserts run whether or not the result names them, and naming them keeps SQLAlchemy rendering them."""
    new_turn = (
        insert(TURNS)
        .from_select(list(_TURN_START_COLUMNS), select(*turn_values).select_from(source).where(guard))
        .returning(TURNS.c.id, TURNS.c.session_id)
        .cte("new_turn")
    )
    message_values = [
        new_turn.c.id if column == "turn_id" else _typed_parameter(MESSAGES, column, "message")
        for column in _MESSAGE_COLUMNS
    ]
    new_message = (
        insert(MESSAGES)
        .from_select(list(_MESSAGE_COLUMNS), select(*message_values).select_from(new_turn))
        .returning(MESSAGES.c.id)
        .cte("new_message")
    )
    # The session by its key first: matched only through `new_turn`, whose row count the planner guesses from
    # `source` (a function's default guess is 1,000 rows), the update read the whole sessions table at every
    # counted start (a seq scan and a hash join, found in session 11 with 3,000 sessions).
    counted = _counted_session(
        and_(
            SESSIONS.c.id == _typed_parameter(TURNS, "session_id", "turn"),
            SESSIONS.c.id.in_(select(new_turn.c.session_id)),
        )
    )
    return [
        select(func.count()).select_from(written).scalar_subquery().label(label)
        for written, label in ((new_turn, "started"), (new_message, "messages"), (counted, "counted"))
    ]


def _start_plain_turn_in_one_statement() -> Any:
    """Postgres: read the session and, when it is plain (no prompt or model of its own, an owner without a
    budget of their own), insert the turn, its user message and the session's counters, in one statement.

    The turn's upstream body is built before the session is read, as it is for a plain session; the statement
    sets its `conversation` and inserts only if the session is plain, so the body is exactly what a read first
    would have built. Constraints (one open turn per session, one turn per Idempotency-Key) are checked at the
    statement's end as for separate statements. The statement returns the session whether or not it inserted.
    """
    found = _found_session()
    plain = and_(_overrides_nothing(found), found.c.monthly_budget_usd.is_(None))
    return select(*found.c, *_guarded_start(_turn_values_in(found), found, plain))


def _found_session() -> Any:
    """A start statement's CTE reading the session (the user's own, not deleted) and its owner's budget."""
    return (
        select(
            SESSIONS.c.id,
            SESSIONS.c.conversation_id,
            SESSIONS.c.prompt,
            SESSIONS.c.model,
            USERS.c.monthly_budget_usd,
        )
        .join(USERS, USERS.c.id == SESSIONS.c.user_id)
        .where(
            SESSIONS.c.id == bindparam("session_key"),
            SESSIONS.c.user_id == bindparam("user_key"),
            SESSIONS.c.deleted_at.is_(None),
        )
        .cte("found_session")
    )


def _overrides_nothing(found: Any) -> ColumnElement[bool]:
    """The session has no prompt or model of its own: a body built for a plain session is its body."""
    # A prompt cleared by PATCH is stored as JSON null, one never set as SQL NULL.
    return and_(func.coalesce(found.c.prompt, _JSON_NULL) == _JSON_NULL, func.coalesce(found.c.model, "") == "")


def _turn_values_in(found: Any) -> list[Any]:
    """The new turn's values, its upstream body's `conversation` set from the session the statement read."""
    return [
        _typed_parameter(TURNS, column, "turn")
        if column != "request"
        else bindparam("turn_request", type_=JSONB).op("||", return_type=JSONB)(
            func.jsonb_build_object(literal("conversation"), found.c.conversation_id)
        )
        for column in _TURN_START_COLUMNS
    ]


START_PLAIN_TURN_ON_DRIVER = CompiledFor(_start_plain_turn_in_one_statement())


async def start_plain_turn(
    connection: DriverConnection, turn: Turn, *, user_message: dict[str, Any], meanwhile: Meanwhile = None
) -> PlainStart:
    """`turn` (its `request` built for a plain session, `conversation` to be filled in) and its user message,
    if its session is plain: see `_start_plain_turn_in_one_statement`. Postgres only, in autocommit."""
    parameters = _guarded_start_parameters(turn, user_message, session_key=turn.session_id)
    row = await connection.fetchrow(START_PLAIN_TURN_ON_DRIVER, parameters, meanwhile=meanwhile)
    if row is None:
        return PlainStart(session=None, started=False)
    session = SessionForTurn(row["id"], row["conversation_id"], row["prompt"], row["model"], row["monthly_budget_usd"])
    return PlainStart(session=session, started=bool(row["started"]))


async def insert_started_turn_on_driver(
    connection: DriverConnection, turn: Turn, *, user_message: dict[str, Any], meanwhile: Meanwhile = None
) -> None:
    """Postgres, in autocommit: `insert_started_turn`'s writes as its one statement."""
    await connection.fetchrow(START_TURN_ON_DRIVER, _start_parameters(turn, user_message), meanwhile=meanwhile)


async def insert_started_turn(connection: AsyncConnection, turn: Turn, *, user_message: dict[str, Any]) -> None:
    """A new turn, its user message and the session's counters, written as Core (no unit of work to flush on
    the path before the first token). `turn` stays a plain (transient) object for the caller."""
    if connection.dialect.name == "postgresql":
        await connection.execute(START_TURN_POSTGRES, _start_parameters(turn, user_message))
        return
    # SQLite runs in process: three statements cost no round trips.
    await connection.execute(INSERT_TURN, _turn_row(turn))
    await connection.execute(INSERT_MESSAGE, user_message)
    await connection.execute(COUNT_SESSION_TURN, {"session_key": turn.session_id, "at": turn.created_at})


async def set_response_ids(db: AsyncSession, ids_by_turn: dict[str, list[str]]) -> None:
    """Several turns' upstream response ids in one executemany (turns that ended meanwhile are left alone)."""
    if not ids_by_turn:
        return
    connection = await db.connection()
    await connection.execute(FINISH_TURN, [{"turn_key": k, "response_ids": v} for k, v in ids_by_turn.items()])


async def request_cancel(db: AsyncSession, *, turn_id: str, at: dt.datetime) -> None:
    await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status.in_(TURN_IN_FLIGHT_STATUSES), Turn.cancel_requested_at.is_(None))
        .values(cancel_requested_at=at)
    )


# Which of a runner's turns were asked to cancel: every second, with every turn it runs. On Postgres the ids
# go as one array, so the statement is the same whatever their number: an expanding IN is new SQL for each
# count, compiled by SQLAlchemy and prepared by asyncpg each time: 3.9-4.1 ms of CPU a poll at 500-1,000
# turns, the event loop held nearly all along, against 0.8-0.9 ms as an array.
_CANCEL_REQUESTED_AMONG_ARRAY = select(Turn.id).where(
    Turn.id == any_(bindparam("turn_ids", type_=ARRAY(String))), Turn.cancel_requested_at.is_not(None)
)


async def cancel_requested_among(db: AsyncSession, turn_ids: Sequence[str]) -> list[str]:
    if not turn_ids:
        return []
    connection = await db.connection()
    if connection.dialect.name == "postgresql":
        result = await connection.execute(_CANCEL_REQUESTED_AMONG_ARRAY, {"turn_ids": list(turn_ids)})
    else:
        result = await connection.execute(
            select(Turn.id).where(Turn.id.in_(turn_ids), Turn.cancel_requested_at.is_not(None))
        )
    return list(result.scalars().all())


async def finish_turn_row(db: AsyncSession, *, turn_id: str, values: dict[str, Any]) -> bool:
    """Write the final state once: only a turn still in flight is finished (a second finisher loses)."""
    connection = await db.connection()
    result = await connection.execute(FINISH_TURN, {**values, "turn_key": turn_id})
    return bool(result.rowcount)


async def add_message(db: AsyncSession, values: dict[str, Any]) -> None:
    connection = await db.connection()
    await connection.execute(INSERT_MESSAGE, values)


async def insert_usage_records(db: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """One ledger row per upstream response; a row that already exists is left alone, never doubled."""
    if not rows:
        return
    connection = await db.connection()
    # executemany: one compiled statement whatever the number of rows.
    await connection.execute(_upserts(connection.dialect.name).add_ledger_row, list(rows))


@dataclass(frozen=True, slots=True)
class _Upserts:
    add_ledger_row: Any
    add_spend: Any


@functools.cache
def _upserts(dialect: str) -> _Upserts:
    """ON CONFLICT statements (Postgres and SQLite spell them alike, but each needs its dialect's construct)."""
    insert_for = pg_insert if dialect == "postgresql" else sqlite_insert
    spend = insert_for(SPEND)
    return _Upserts(
        add_ledger_row=insert_for(LEDGER).on_conflict_do_nothing(index_elements=[LEDGER.c.response_id]),
        add_spend=spend.on_conflict_do_update(
            index_elements=[SPEND.c.user_id, SPEND.c.month],
            set_={"cost_usd": SPEND.c.cost_usd + spend.excluded.cost_usd, "updated_at": spend.excluded.updated_at},
        ),
    )


async def claim_orphaned_turns(
    db: AsyncSession, *, runner_id: str, stale_before: dt.datetime, limit: int = 100
) -> list[Turn]:
    """Turns in flight whose runner stopped beating; claimed for this runner so only one replica
    reconciles each."""
    live = select(RunnerHeartbeat.id).where(RunnerHeartbeat.beat_at >= stale_before)
    candidates = (
        await db.scalars(
            select(Turn)
            .where(
                Turn.status.in_(TURN_IN_FLIGHT_STATUSES),
                (Turn.runner_id.is_(None)) | (Turn.runner_id.not_in(live)),
                Turn.runner_id.is_distinct_from(runner_id),
            )
            .limit(limit)
        )
    ).all()
    claimed: list[Turn] = []
    for turn in candidates:
        result = await db.execute(
            update(Turn)
            .where(
                Turn.id == turn.id,
                Turn.runner_id.is_not_distinct_from(turn.runner_id),
                Turn.status.in_(TURN_IN_FLIGHT_STATUSES),
            )
            .values(runner_id=runner_id)
        )
        if getattr(result, "rowcount", 0):
            turn.runner_id = runner_id
            claimed.append(turn)
    return claimed


async def beat(db: AsyncSession, *, runner_id: str, at: dt.datetime) -> None:
    result = await db.execute(update(RunnerHeartbeat).where(RunnerHeartbeat.id == runner_id).values(beat_at=at))
    if not getattr(result, "rowcount", 0):
        db.add(RunnerHeartbeat(id=runner_id, started_at=at, beat_at=at))
        await db.flush()


async def remove_heartbeat(db: AsyncSession, *, runner_id: str) -> None:
    await db.execute(delete(RunnerHeartbeat).where(RunnerHeartbeat.id == runner_id))


@functools.cache
def _final_write_statement(
    turn_keys: tuple[str, ...], with_message: bool, ledger_keys: tuple[str, ...], ledger_rows: int, with_spend: bool
) -> CompiledFor:
    """Postgres: a turn's whole final write as one statement of data-modifying CTEs (built once per shape).

    `finished` sets the turn's final state only if it is still in flight; the message, the session's cost and
    the month's spend are written only through it (`FROM finished`), so a replay of a write that already
    landed changes nothing but the ledger, whose rows are unique per response id (ON CONFLICT DO NOTHING)
    either way. One statement is atomic on its own: run in autocommit it is one round trip, where separate
    statements in a transaction were seven.
    """

    def param(name: str, column: Any) -> Any:
        return bindparam(name, type_=column.type)

    finished = (
        update(TURNS)
        .where(
            TURNS.c.id == bindparam("turn_key"),
            TURNS.c.status.in_([literal(status) for status in TURN_IN_FLIGHT_STATUSES]),
        )
        .values({key: param(f"turn_{key}", TURNS.c[key]) for key in turn_keys})
        .returning(TURNS.c.id)
        .cte("finished")
    )
    at = param("at", TURNS.c.completed_at)
    counts = [select(func.count()).select_from(finished).scalar_subquery()]
    if with_message:
        new_message = (
            insert(MESSAGES)
            .from_select(
                ["id", "session_id", "turn_id", "role", "content", "status", "created_at"],
                select(
                    param("message_id", MESSAGES.c.id),
                    param("session_key", MESSAGES.c.session_id),
                    finished.c.id,
                    literal("assistant", MESSAGES.c.role.type),
                    param("message_content", MESSAGES.c.content),
                    param("message_status", MESSAGES.c.status),
                    at,
                ).select_from(finished),
            )
            .returning(MESSAGES.c.id)
            .cte("new_message")
        )
        counts.append(select(func.count()).select_from(new_message).scalar_subquery())
    if ledger_rows:
        # INSERT … SELECT rather than a multi-row VALUES, which SQLAlchemy does not cache (it would compile
        # this statement at every turn).
        rows = [select(*(param(f"ledger{i}_{key}", LEDGER.c[key]) for key in ledger_keys)) for i in range(ledger_rows)]
        ledger = (
            pg_insert(LEDGER)
            .from_select(list(ledger_keys), rows[0] if ledger_rows == 1 else union_all(*rows))
            .on_conflict_do_nothing(index_elements=[LEDGER.c.response_id])
            .returning(LEDGER.c.id)
            .cte("ledger")
        )
        counts.append(select(func.count()).select_from(ledger).scalar_subquery())
    known_cost = param("known_cost", SESSIONS.c.total_cost_usd)
    session_cost = (
        update(SESSIONS)
        .where(SESSIONS.c.id == param("session_key", SESSIONS.c.id), select(finished.c.id).exists())
        .values(last_turn_at=at, total_cost_usd=SESSIONS.c.total_cost_usd + known_cost)
        .returning(SESSIONS.c.id)
        .cte("session_cost")
    )
    counts.append(select(func.count()).select_from(session_cost).scalar_subquery())
    if with_spend:
        spend = pg_insert(SPEND).from_select(
            ["user_id", "month", "cost_usd", "updated_at"],
            select(param("user_key", SPEND.c.user_id), param("month", SPEND.c.month), known_cost, at).select_from(
                finished
            ),
        )
        spend_cte = (
            spend.on_conflict_do_update(
                index_elements=[SPEND.c.user_id, SPEND.c.month],
                set_={"cost_usd": SPEND.c.cost_usd + spend.excluded.cost_usd, "updated_at": spend.excluded.updated_at},
            )
            .returning(SPEND.c.user_id)
            .cte("spend")
        )
        counts.append(select(func.count()).select_from(spend_cte).scalar_subquery())
    return CompiledFor(select(*counts))


async def write_final_postgres(
    connection: DriverConnection,
    *,
    turn_id: str,
    session_id: str,
    user_id: str,
    turn_values: dict[str, Any],
    message: dict[str, Any] | None,
    ledger: Sequence[dict[str, Any]],
    known_cost: Decimal,
    month: str,
    at: dt.datetime,
) -> bool:
    """The final write as one statement (see `_final_write_statement`); True when it finished the turn."""
    turn_keys = tuple(sorted(turn_values))
    ledger_keys = tuple(sorted(ledger[0])) if ledger else ()
    statement = _final_write_statement(turn_keys, message is not None, ledger_keys, len(ledger), bool(known_cost))
    parameters: dict[str, Any] = {f"turn_{key}": value for key, value in turn_values.items()}
    parameters.update(
        turn_key=turn_id, session_key=session_id, user_key=user_id, known_cost=known_cost, month=month, at=at
    )
    if message is not None:
        parameters.update(
            message_id=message["id"], message_content=message["content"], message_status=message["status"]
        )
    for i, row in enumerate(ledger):
        parameters.update({f"ledger{i}_{key}": row[key] for key in ledger_keys})
    counts = await connection.fetchrow(statement, parameters)
    assert counts is not None
    return bool(next(iter(counts.values())))


async def add_session_cost(db: AsyncSession, *, session_id: str, cost: Decimal | None, at: dt.datetime) -> None:
    # Money is NUMERIC on Postgres and whole 10^-10 USD on SQLite: `+` is exact on both.
    connection = await db.connection()
    if cost is None:
        await connection.execute(TOUCH_SESSION, {"session_key": session_id, "at": at})
    else:
        await connection.execute(ADD_SESSION_COST, {"session_key": session_id, "at": at, "cost": cost})


async def add_monthly_spend(db: AsyncSession, *, user_id: str, month: str, cost: Decimal, at: dt.datetime) -> None:
    """Add to a user's spend for one month (a row per user and month, created on first spend): one upsert."""
    connection = await db.connection()
    await connection.execute(
        _upserts(connection.dialect.name).add_spend,
        {"user_id": user_id, "month": month, "cost_usd": cost, "updated_at": at},
    )


async def monthly_spend(db: AsyncSession, *, user_id: str, month: str) -> Decimal:
    spend = await db.scalar(
        select(UserMonthlySpend.cost_usd).where(UserMonthlySpend.user_id == user_id, UserMonthlySpend.month == month)
    )
    return spend if spend is not None else Decimal(0)


@dataclass(frozen=True, slots=True)
class LimitCounts:
    in_flight: int
    recent: int  # turns started since the window's start
    oldest_recent: dt.datetime | None
    month_spend: Decimal


def _limit_counts_statement() -> Any:
    mine = TURNS.c.user_id == bindparam("user_key")
    since = bindparam("since", type_=TURNS.c.created_at.type)
    # count(*), not count(id): the indexes on (user_id, status) and (user_id, created_at) answer alone.
    in_flight = (
        select(func.count())
        .select_from(TURNS)
        .where(mine, TURNS.c.status.in_([literal(status) for status in TURN_IN_FLIGHT_STATUSES]))
        .scalar_subquery()
    )
    recent = select(func.count()).select_from(TURNS).where(mine, TURNS.c.created_at >= since).scalar_subquery()
    oldest = select(func.min(TURNS.c.created_at)).where(mine, TURNS.c.created_at >= since).scalar_subquery()
    spend = (
        select(SPEND.c.cost_usd)
        .where(SPEND.c.user_id == bindparam("user_key"), SPEND.c.month == bindparam("month"))
        .scalar_subquery()
    )
    return select(
        in_flight.label("in_flight"), recent.label("recent"), oldest.label("oldest_recent"), spend.label("month_spend")
    )


# Built once, like the other statements of a turn's start (limits count at every start by default).
LIMIT_COUNTS = _limit_counts_statement()


async def limit_counts(db: AsyncSession, *, user_id: str, since: dt.datetime, month: str) -> LimitCounts:
    """Everything the per-user limits compare, in one round trip."""
    row = (await db.execute(LIMIT_COUNTS, {"user_key": user_id, "since": since, "month": month})).one()
    return _limit_counts_of(row)


def _limit_counts_of(row: Any) -> LimitCounts:
    return LimitCounts(
        in_flight=int(row[0] or 0),
        recent=int(row[1] or 0),
        oldest_recent=_as_utc(row[2]),
        month_spend=row[3] if row[3] is not None else Decimal(0),
    )


@dataclass(frozen=True, slots=True)
class CountedStart:
    """What `start_counted_turn` found: the session (None: not the user's, or deleted), what the limits
    counted, whether the body it was given fits the session, and whether the turn started (it did not when the
    body did not fit or a limit was reached)."""

    session: SessionForTurn | None
    counts: LimitCounts | None
    body_fits: bool
    started: bool


def _locked_limit_counts() -> Any:
    """The owner's row locked, then `LIMIT_COUNTS` counted with a snapshot taken after the lock: the migration
    bb2100c2b941's function. Being VOLATILE it takes a snapshot for each statement it runs, so under READ
    COMMITTED its counts include every turn the owner's other starts committed, on any replica, while this one
    waited for the lock (in the calling statement's own snapshot they would not)."""
    function = func.parley_locked_limit_counts(
        bindparam("user_key", type_=USERS.c.id.type),
        bindparam("since", type_=TURNS.c.created_at.type),
        bindparam("month", type_=SPEND.c.month.type),
        bindparam("in_flight_statuses", list(TURN_IN_FLIGHT_STATUSES), type_=ARRAY(String)),
    )
    counted = function.table_valued(
        column("in_flight", BigInteger),
        column("recent", BigInteger),
        column("oldest_recent", TURNS.c.created_at.type),
        column("month_spend", SPEND.c.cost_usd.type),
    )
    return select(counted).cte("counts")


def _start_counted_turn_in_one_statement() -> Any:
    """Postgres, in autocommit: read the session, lock its owner's row and count what the limits compare
    (`_locked_limit_counts`), and, when the body fits the session and every count is under its limit, insert
    the turn, its user message and the session's counters: one statement, one round trip before the first
    token (it was four: BEGIN, the lock, the guarded insert, COMMIT). The lock is held until the statement
    commits, so concurrent starts of one user are counted one after the other.

    The body fits when it was built from this session (`body_for_session`) or, built for a plain session, the
    session has no prompt or model of its own (as in `_start_plain_turn_in_one_statement`). The limits are
    parameters (0: none) and the budget the owner's own or else `default_budget` (NULL: none), compared as
    `services.limits.limit_error` compares them."""
    found = _found_session()
    counts = _locked_limit_counts()
    max_in_flight = bindparam("max_in_flight", type_=Integer)
    max_recent = bindparam("max_recent", type_=Integer)
    budget = func.coalesce(found.c.monthly_budget_usd, bindparam("default_budget", type_=SPEND.c.cost_usd.type))
    under_limits = and_(
        or_(max_in_flight == 0, counts.c.in_flight < max_in_flight),
        or_(max_recent == 0, counts.c.recent < max_recent),
        or_(budget.is_(None), func.coalesce(counts.c.month_spend, 0) < budget),
    )
    body_fits = or_(bindparam("body_for_session", type_=Boolean), _overrides_nothing(found))
    source = found.join(counts, true())
    return select(
        *found.c,
        *counts.c,
        body_fits.label("body_fits"),
        *_guarded_start(_turn_values_in(found), source, and_(body_fits, under_limits)),
    )


START_COUNTED_TURN_ON_DRIVER = CompiledFor(_start_counted_turn_in_one_statement())


async def start_counted_turn(
    connection: DriverConnection,
    turn: Turn,
    *,
    user_message: dict[str, Any],
    body_for_session: bool,
    since: dt.datetime,
    month: str,
    max_in_flight: int,
    max_recent: int,
    default_budget: Decimal | None,
    meanwhile: Meanwhile = None,
) -> CountedStart:
    """`turn` and its user message under the owner's limits: see `_start_counted_turn_in_one_statement`.
    Postgres only, in autocommit. `turn.request` gets its `conversation` from the session either way."""
    parameters = _guarded_start_parameters(
        turn,
        user_message,
        session_key=turn.session_id,
        body_for_session=body_for_session,
        since=since,
        month=month,
        max_in_flight=max_in_flight,
        max_recent=max_recent,
        default_budget=default_budget,
    )
    row = await connection.fetchrow(START_COUNTED_TURN_ON_DRIVER, parameters, meanwhile=meanwhile)
    if row is None:
        return CountedStart(session=None, counts=None, body_fits=False, started=False)
    session = SessionForTurn(row["id"], row["conversation_id"], row["prompt"], row["model"], row["monthly_budget_usd"])
    counts = _limit_counts_of([row["in_flight"], row["recent"], row["oldest_recent"], row["month_spend"]])
    return CountedStart(session=session, counts=counts, body_fits=bool(row["body_fits"]), started=bool(row["started"]))


def _as_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    if isinstance(value, str):  # SQLite hands MIN() back untyped
        value = dt.datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value
