"""Turns, their ledger rows, and the runners' heartbeats."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

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

# The tables behind the mapped classes, for Core statements on the hot paths (no ORM unit of work).
TURNS = cast(Table, Turn.__table__)
MESSAGES = cast(Table, Message.__table__)
SESSIONS = cast(Table, ChatSession.__table__)
LEDGER = cast(Table, UsageRecord.__table__)
SPEND = cast(Table, UserMonthlySpend.__table__)
USERS = cast(Table, User.__table__)


def active_leaf(session_key: Any) -> Any:
    """The session's active leaf: the newest message on its active branch (a new message's parent). Every
    branch operation that moves the leaf elsewhere first makes the path to it the active branch."""
    return (
        select(MESSAGES.c.id)
        .where(MESSAGES.c.session_id == session_key, MESSAGES.c.on_active_branch)
        .order_by(MESSAGES.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


# Statements on the path of every turn are built once: building one (coercing each value into a bind
# parameter) costs more than running it from SQLAlchemy's compiled cache. Values come at execution.
INSERT_TURN = insert(TURNS)
INSERT_MESSAGE = insert(MESSAGES)
# A message that goes on the active branch, after its leaf.
INSERT_MESSAGE_AFTER_LEAF = insert(MESSAGES).values(parent_id=active_leaf(bindparam("leaf_session_key")))
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


async def list_session_turns(db: AsyncSession, *, session_id: str) -> Sequence[Turn]:
    """Every turn of a session (all its branches), oldest first."""
    return (await db.scalars(select(Turn).where(Turn.session_id == session_id).order_by(Turn.id))).all()


async def find_by_idempotency_key(db: AsyncSession, *, user_id: str, key: str) -> Turn | None:
    turn: Turn | None = await db.scalar(select(Turn).where(Turn.user_id == user_id, Turn.idempotency_key == key))
    return turn


async def find_open(db: AsyncSession, *, session_id: str) -> Turn | None:
    """The session's turn that is running or waiting for tool outputs, if any."""
    statement = select(Turn).where(Turn.session_id == session_id, Turn.status.in_(TURN_OPEN_STATUSES))
    turn: Turn | None = await db.scalar(statement)
    return turn


async def resume_waiting_turn(
    db: AsyncSession, *, turn_id: str, runner_id: str, reserved_usd: Decimal | None = None
) -> bool:
    result = await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status == "requires_action")
        .values(
            status="in_progress",
            runner_id=runner_id,
            required_action=None,
            pending_tool_outputs=None,
            cancel_requested_at=None,
            reserved_usd=reserved_usd,
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


async def insert_started_turn(db: AsyncSession, turn: Turn, *, user_message: dict[str, Any]) -> None:
    """A new turn, its user message and the session's counters, written as Core (no unit of work to flush).
    `turn` stays a plain (transient) object for the caller. The partial unique indexes refuse a second open
    turn in the session and a used Idempotency-Key (IntegrityError)."""
    connection = await db.connection()
    if connection.dialect.name == "postgresql":
        # The three writes as one statement: one round trip before the first token instead of three. (SQLite
        # runs in process, where separate statements cost no round trips.)
        parameters = {f"turn_{key}": value for key, value in _turn_row(turn).items()}
        parameters.update({f"new_message_{key}": value for key, value in user_message.items()})
        await connection.execute(START_TURN_POSTGRES, parameters)
        return
    await connection.execute(INSERT_TURN, _turn_row(turn))
    await add_message_after_leaf(db, user_message)
    await connection.execute(COUNT_SESSION_TURN, {"session_key": turn.session_id, "at": turn.created_at})


async def insert_branch_turn(db: AsyncSession, turn: Turn, *, user_message: dict[str, Any] | None) -> None:
    """The turn that starts a branch (an edit's, with its new `user_message`; a regenerate's, with none), once
    the session's active branch and conversation are the new branch's. Separate statements: branches are rare."""
    connection = await db.connection()
    await connection.execute(INSERT_TURN, _turn_row(turn))
    if user_message is not None:
        await connection.execute(INSERT_MESSAGE, user_message)
    await connection.execute(COUNT_SESSION_TURN, {"session_key": turn.session_id, "at": turn.created_at})


def _start_turn_in_one_statement() -> Any:
    """Postgres: `INSERT_TURN`, `INSERT_MESSAGE` and `COUNT_SESSION_TURN` as data-modifying CTEs of one
    statement. Constraints (one open turn per session, one turn per Idempotency-Key, the message's foreign key)
    are checked at the statement's end, as for separate statements."""
    turn_columns = [column.name for column in TURNS.columns if column.name in _TURN_START_COLUMNS]
    new_turn = (
        insert(TURNS)
        .values({column: bindparam(f"turn_{column}") for column in turn_columns})
        .returning(TURNS.c.id)
        .cte("new_turn")
    )
    new_message = (
        insert(MESSAGES)
        .values(
            {
                **{column: bindparam(f"new_message_{column}") for column in _MESSAGE_START_COLUMNS},
                "parent_id": active_leaf(bindparam("new_message_session_id")),
            }
        )
        .returning(MESSAGES.c.id)
        .cte("new_message")
    )
    counted = (
        update(SESSIONS)
        .where(SESSIONS.c.id == bindparam("turn_session_id"))
        .values(
            turn_count=SESSIONS.c.turn_count + 1,
            last_turn_at=bindparam("turn_created_at"),
            updated_at=bindparam("turn_created_at"),
        )
        .returning(SESSIONS.c.id)
        .cte("counted_session")
    )
    # One row each: joined on TRUE (a cross join the cartesian-product linter does not flag).
    joined = new_turn.join(new_message, true()).join(counted, true())
    return select(new_turn.c.id, new_message.c.id, counted.c.id).select_from(joined)


def _turn_row(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.id,
        "session_id": turn.session_id,
        "user_id": turn.user_id,
        "status": turn.status,
        "message_id": turn.message_id,
        "input": turn.input,
        "request": turn.request,
        "metadata": turn.metadata_,
        "output_text": turn.output_text,
        "response_ids": turn.response_ids,
        "idempotency_key": turn.idempotency_key,
        "request_fingerprint": turn.request_fingerprint,
        "runner_id": turn.runner_id,
        "reserved_usd": turn.reserved_usd,
        "created_at": turn.created_at,
    }


# The columns a start writes (`_turn_row`, and the user message `services.turn_service.start_turn` builds).
_TURN_START_COLUMNS = frozenset(
    {
        "id",
        "session_id",
        "user_id",
        "status",
        "message_id",
        "input",
        "request",
        "metadata",
        "output_text",
        "response_ids",
        "idempotency_key",
        "request_fingerprint",
        "runner_id",
        "reserved_usd",
        "created_at",
    }
)
_MESSAGE_START_COLUMNS = (
    "id",
    "session_id",
    "turn_id",
    "role",
    "content",
    "status",
    "items",
    "conversation_id",
    "created_at",
)
START_TURN_POSTGRES = _start_turn_in_one_statement()


async def set_response_ids(db: AsyncSession, ids_by_turn: dict[str, list[str]]) -> None:
    """Several turns' upstream response ids in one executemany (turns that ended meanwhile are left alone).
    The stored sequence number belonged to the newest response: it is cleared with them, until the next
    heartbeat stores the pair (`set_positions`)."""
    if not ids_by_turn:
        return
    connection = await db.connection()
    await connection.execute(
        FINISH_TURN,
        [{"turn_key": k, "response_ids": v, "last_sequence_number": None} for k, v in ids_by_turn.items()],
    )


async def set_tool_outputs(db: AsyncSession, turn_id: str, outputs: list[dict[str, Any]]) -> None:
    """The outputs of Parley's own tools in a running turn's latest round, before that round is sent upstream
    (a turn that ended meanwhile is left alone)."""
    connection = await db.connection()
    await connection.execute(FINISH_TURN, {"turn_key": turn_id, "pending_tool_outputs": outputs})


async def set_positions(db: AsyncSession, positions: dict[str, tuple[list[str], int]]) -> None:
    """How far running turns have relayed their newest upstream response: response ids and the last sequence
    number together, in one executemany (turns that ended meanwhile are left alone)."""
    if not positions:
        return
    connection = await db.connection()
    await connection.execute(
        FINISH_TURN,
        [
            {"turn_key": turn_id, "response_ids": response_ids, "last_sequence_number": number}
            for turn_id, (response_ids, number) in positions.items()
        ],
    )


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


async def finish_turn(
    db: AsyncSession,
    *,
    turn_id: str,
    session_id: str,
    user_id: str,
    values: dict[str, Any],
    message: dict[str, Any] | None,
    ledger: Sequence[dict[str, Any]],
    cost: Decimal,
    at: dt.datetime,
    month: str,
) -> None:
    """A turn's final write, idempotent: its final state, and only if that finished it (a second finisher loses)
    the assistant `message` (id, content, status), the session's cost and the user's spend in `month`; the
    ledger rows (one per upstream response, never doubled) in any case."""
    if db.get_bind().dialect.name == "postgresql":
        # All of it as one statement, which needs no transaction around it: one round trip instead of seven
        # (BEGIN and COMMIT included). (SQLite runs in process, where separate statements cost no round trips.)
        connection = await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        ledger_columns = tuple(ledger[0]) if ledger else ()
        statement = _finish_in_one_statement(
            tuple(values), message is not None, ledger_columns, len(ledger), bool(cost)
        )
        parameters = {"turn_key": turn_id, "cost": cost, "at": at, "month": month}
        parameters.update({f"turn_{key}": value for key, value in values.items()})
        parameters.update({f"new_message_{key}": value for key, value in (message or {}).items()})
        for number, row in enumerate(ledger):
            parameters.update({f"ledger_{number}_{key}": value for key, value in row.items()})
        await connection.execute(statement, parameters)
        return
    if not await finish_turn_row(db, turn_id=turn_id, values=values):
        # Already finished (a replay of a write that did land): only make sure the ledger is whole.
        await insert_usage_records(db, ledger)
        return
    if message is not None:
        row = {**message, "session_id": session_id, "turn_id": turn_id, "role": "assistant", "created_at": at}
        await add_message_after_leaf(db, row)
    await insert_usage_records(db, ledger)
    await add_session_cost(db, session_id=session_id, cost=cost, at=at)
    if cost:
        await add_monthly_spend(db, user_id=user_id, month=month, cost=cost, at=at)


@functools.cache
def _finish_in_one_statement(
    turn_columns: tuple[str, ...], message: bool, ledger_columns: tuple[str, ...], ledger_rows: int, spend: bool
) -> Any:
    """Postgres: `FINISH_TURN`, then on the turn it finished the message, the session's cost and the user's
    spend, as data-modifying CTEs of one statement; the ledger rows whatever it finished. One statement per
    shape of final write (which turn columns, a message or not, how many ledger rows, a cost or not)."""
    finished = (
        update(TURNS)
        .where(TURNS.c.id == bindparam("turn_key"), TURNS.c.status.in_([literal(s) for s in TURN_IN_FLIGHT_STATUSES]))
        .values({column: bindparam(f"turn_{column}") for column in turn_columns})
        .returning(TURNS.c.id, TURNS.c.session_id, TURNS.c.user_id)
        .cte("finished")
    )
    writes: list[Any] = [
        update(SESSIONS)
        .where(SESSIONS.c.id == finished.c.session_id)
        .values(
            last_turn_at=bindparam("at", type_=SESSIONS.c.last_turn_at.type),
            total_cost_usd=SESSIONS.c.total_cost_usd + bindparam("cost", type_=SESSIONS.c.total_cost_usd.type),
        )
        .returning(SESSIONS.c.id)
        .cte("session_cost")
    ]
    if message:
        columns = ("id", "content", "status", "items", "model", "conversation_id")
        writes.append(
            insert(MESSAGES)
            .from_select(
                [*columns, "session_id", "turn_id", "role", "created_at", "parent_id"],
                select(
                    *(bindparam(f"new_message_{c}", type_=MESSAGES.c[c].type) for c in columns),
                    finished.c.session_id,
                    finished.c.id,
                    literal("assistant", MESSAGES.c.role.type),
                    bindparam("at", type_=MESSAGES.c.created_at.type),
                    active_leaf(finished.c.session_id),
                ),
            )
            .returning(MESSAGES.c.id)
            .cte("new_message")
        )
    # A CTE per ledger row: a multi-row VALUES with bind parameters would not be cached.
    writes.extend(
        pg_insert(LEDGER)
        .values({column: bindparam(f"ledger_{number}_{column}") for column in ledger_columns})
        .on_conflict_do_nothing(index_elements=[LEDGER.c.response_id])
        .returning(LEDGER.c.id)
        .cte(f"ledger_row_{number}")
        for number in range(ledger_rows)
    )
    if spend:
        spent = pg_insert(SPEND).from_select(
            ["user_id", "month", "cost_usd", "updated_at"],
            select(
                finished.c.user_id,
                bindparam("month", type_=SPEND.c.month.type),
                bindparam("cost", type_=SPEND.c.cost_usd.type),
                bindparam("at", type_=SPEND.c.updated_at.type),
            ),
        )
        writes.append(
            spent.on_conflict_do_update(
                index_elements=[SPEND.c.user_id, SPEND.c.month],
                set_={"cost_usd": SPEND.c.cost_usd + spent.excluded.cost_usd, "updated_at": spent.excluded.updated_at},
            )
            .returning(SPEND.c.user_id)
            .cte("spend")
        )
    # The writes are not read: `add_cte` renders them anyway (Postgres runs every data-modifying CTE once).
    return select(func.count()).select_from(finished).add_cte(*writes)


async def add_message_after_leaf(db: AsyncSession, values: dict[str, Any]) -> None:
    """A message on its session's active branch, after the leaf."""
    connection = await db.connection()
    await connection.execute(INSERT_MESSAGE_AFTER_LEAF, {**values, "leaf_session_key": values["session_id"]})


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


async def count_live_runners(db: AsyncSession, *, beat_since: dt.datetime) -> int:
    """The runners (Parley processes) that beat since then, on this database."""
    count = await db.scalar(
        select(func.count()).select_from(RunnerHeartbeat).where(RunnerHeartbeat.beat_at >= beat_since)
    )
    return int(count or 0)


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
    reserved: Decimal  # what the user's turns in flight hold against the budget (`Turn.reserved_usd`)


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
    # Whatever month they started in: a turn's cost lands in the month it ends.
    reserved = (
        select(func.sum(TURNS.c.reserved_usd))
        .where(mine, TURNS.c.status.in_([literal(status) for status in TURN_IN_FLIGHT_STATUSES]))
        .scalar_subquery()
    )
    return select(
        in_flight.label("in_flight"),
        recent.label("recent"),
        oldest.label("oldest_recent"),
        spend.label("month_spend"),
        reserved.label("reserved"),
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
        reserved=row[4] if row[4] is not None else Decimal(0),
    )


async def reservation_of(db: AsyncSession, *, turn_id: str) -> Decimal:
    """What the turn holds against its owner's budget now (nothing once it ended)."""
    reserved = await db.scalar(select(TURNS.c.reserved_usd).where(TURNS.c.id == turn_id))
    return reserved if reserved is not None else Decimal(0)


async def set_reservation(db: AsyncSession, *, turn_id: str, amount: Decimal) -> None:
    """Hold `amount` for a turn still in flight (one that ended meanwhile keeps its cleared reservation)."""
    connection = await db.connection()
    await connection.execute(FINISH_TURN, {"turn_key": turn_id, "reserved_usd": amount})


@dataclass(frozen=True, slots=True)
class LastUsage:
    """What the session's last upstream response read and wrote, and the model that served it."""

    model: str | None
    input_tokens: int
    output_tokens: int


# A budget's reservation for the session's next round starts from this (ledger ids are time-ordered).
LAST_USAGE = (
    select(LEDGER.c.model, LEDGER.c.input_tokens, LEDGER.c.output_tokens)
    .where(LEDGER.c.session_id == bindparam("session_key"))
    .order_by(LEDGER.c.id.desc())
    .limit(1)
)


async def last_usage(db: AsyncSession, *, session_id: str) -> LastUsage:
    row = (await db.execute(LAST_USAGE, {"session_key": session_id})).first()
    if row is None:
        return LastUsage(model=None, input_tokens=0, output_tokens=0)
    return LastUsage(model=row[0], input_tokens=int(row[1] or 0), output_tokens=int(row[2] or 0))


def _as_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    if isinstance(value, str):  # SQLite hands MIN() back untyped
        value = dt.datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value
