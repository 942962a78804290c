"""ORM models. Relationships are `lazy="raise"`: every load is explicit in a repository."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, Unmapped, mapped_column, unmapped_column

from app.db.base import Base, Money, PortableJSON, UTCDateTime, utcnow
from app.db.fulltext import POSTGRES_ONLY

# The namespace of users made by the admin API or `parley keys create --user NAME`, who sign in with API keys.
API_KEY_SOURCE = "api_key"


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Where the name comes from, the namespace it is unique in: API_KEY_SOURCE, or a JWT issuer's
    # (`services.auth.jwt_source`). A JWT subject "alice" and the API-key user "alice" are two people.
    source: Mapped[str] = mapped_column(Text)
    # The user's stable name: given to `parley keys create --user NAME`, or a JWT's `sub`.
    name: Mapped[str] = mapped_column(String(255))
    # None: the deployment's default (PARLEY_DEFAULT_MONTHLY_BUDGET_USD).
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Money())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("source", "name", name="uq_users_source_name"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, so a person can tell their keys apart in a listing.
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ChatSession(Base):
    """A chat thread of one user, mapped 1:1 to an upstream Conversation."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The active branch's conversation (every branch has one of its own: `SessionConversation`).
    conversation_id: Mapped[str] = mapped_column(String(128), unique=True)
    title: Mapped[str | None] = mapped_column(String(500))
    # Who gave the title: "user" (at create or PATCH), "auto" (made after the first turn), None (no title yet).
    title_source: Mapped[str | None] = mapped_column(String(8))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", PortableJSON, default=dict)
    prompt: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)
    model: Mapped[str | None] = mapped_column(String(128))
    # Responses options and tools for every turn of the session (a message's own override them).
    options: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict, server_default="{}")
    tools: Mapped[list[dict[str, Any]]] = mapped_column(PortableJSON, default=list, server_default="[]")
    # The deployment's own tools (PARLEY_TOOLS) the session may use, by name; None: every one the prompt allows.
    server_tools: Mapped[list[str] | None] = mapped_column(PortableJSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_turn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    total_cost_usd: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    # Deleted sessions keep their row (the cost ledger points at it) but lose their content.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Search (Postgres; SQLite has the FTS5 table sessions_fts instead). Unmapped: the ORM never reads or writes it.
    title_tsv: Unmapped[str] = unmapped_column(
        TSVECTOR,
        Computed("to_tsvector('simple'::regconfig, (COALESCE(title, ''::character varying))::text)", persisted=True),
        info=POSTGRES_ONLY,
    )

    __table_args__ = (
        Index("ix_sessions_user_id_id", "user_id", "id"),
        Index("ix_sessions_title_tsv", "title_tsv", postgresql_using="gin", info=POSTGRES_ONLY),
    )


class StoredFile(Base):
    """A file a user uploaded: its bytes (kept here, so every replica serves them) and its upstream copy."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # pfile_…
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    # Judged by the content, not the name.
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    # The upstream's `file-…` id, once uploaded there (purpose user_data).
    upstream_file_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Deleted by its user: hidden at once; deleted upstream once no live session references it.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    upstream_deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_files_user_id_id", "user_id", "id"),)


class SessionConversation(Base):
    """Every upstream conversation a session made (its first, and one per branch), so deleting it deletes all."""

    __tablename__ = "session_conversations"

    conversation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    """One message of a session's tree: its parent is the message before it on its branch."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn_id: Mapped[str | None] = mapped_column(String(40))
    # None for the first message of a branch that starts at the top (the session's first, or an edit of it).
    parent_id: Mapped[str | None] = mapped_column(String(40))
    # The branch conversation the message was added to; a leaf's is where its branch goes on.
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    # On the path from the top to the session's active leaf (the newest message that is): what
    # `GET …/messages` lists and search finds. Kept by the branch operations, the only ones that move the leaf
    # anywhere but to a new message.
    on_active_branch: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="completed")
    # The Responses items that make it up (the contract's Message.items); None for messages stored before them.
    items: Mapped[list[dict[str, Any]] | None] = mapped_column(PortableJSON)
    # An assistant message's model, as served.
    model: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Search (Postgres; SQLite has the FTS5 table messages_fts instead). Unmapped: the ORM never reads or writes it.
    content_tsv: Unmapped[str] = unmapped_column(
        TSVECTOR, Computed("to_tsvector('simple'::regconfig, content)", persisted=True), info=POSTGRES_ONLY
    )

    __table_args__ = (
        Index("ix_messages_session_id_id", "session_id", "id"),
        Index("ix_messages_parent_id", "parent_id"),
        Index("ix_messages_content_tsv", "content_tsv", postgresql_using="gin", info=POSTGRES_ONLY),
    )


# A process is running these turns.
TURN_IN_FLIGHT_STATUSES = ("queued", "in_progress")
# These hold their session: a turn waiting for the client's tool outputs blocks new messages too, since the
# conversation holds function calls that have no output yet.
TURN_OPEN_STATUSES = ("queued", "in_progress", "requires_action")
_OPEN_SQL = "status IN ('queued', 'in_progress', 'requires_action')"


class Turn(Base):
    """One user message and everything the assistant did to answer it."""

    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(24))
    # The user message it answers (a regenerated answer's turn shares it with the turn before).
    message_id: Mapped[str | None] = mapped_column(String(40))
    input: Mapped[Any] = mapped_column(PortableJSON)
    # What was sent upstream, resolved from message → session → deployment defaults.
    request: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", PortableJSON, default=dict)
    output_text: Mapped[str] = mapped_column(Text, default="")
    response_ids: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    usage: Mapped[dict[str, int] | None] = mapped_column(PortableJSON)
    cost_usd: Mapped[Decimal | None] = mapped_column(Money())
    # Under a monthly budget, while a round is upstream: the most the turn's unsettled rounds may cost, counted
    # against the owner's budget by other starts; the final write clears it as it adds the actual cost.
    reserved_usd: Mapped[Decimal | None] = mapped_column(Money())
    error: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The process running the turn (see Runner); lets a live replica tell its turns from a dead one's.
    runner_id: Mapped[str | None] = mapped_column(String(64))
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # requires_action: the function calls the client must answer, and outputs of Parley's own tools from
    # the same step, sent upstream together with the client's.
    required_action: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)
    pending_tool_outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(PortableJSON)
    last_event_id: Mapped[int | None] = mapped_column(Integer)
    # While a background response of the turn runs: the upstream `sequence_number` of the last event of its
    # newest response (the last of `response_ids`) that was relayed, as of its runner's last heartbeat. Where
    # another process would re-attach (`GET /v1/responses/{id}?stream=true&starting_after=N`); None: from the start.
    last_sequence_number: Mapped[int | None] = mapped_column(BigInteger)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # What the person who asked thought of the answer: "up", "down" or none, a comment, and when they said so.
    feedback_rating: Mapped[str | None] = mapped_column(String(8))
    feedback_comment: Mapped[str | None] = mapped_column(Text)
    feedback_updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_turns_session_id_id", "session_id", "id"),
        Index("uq_turns_user_id_idempotency_key", "user_id", "idempotency_key", unique=True),
        # One turn in flight per session, enforced by the database so it holds across processes.
        Index(
            "uq_turns_session_in_flight",
            "session_id",
            unique=True,
            sqlite_where=text(_OPEN_SQL),
            postgresql_where=text(_OPEN_SQL),
        ),
        Index("ix_turns_status_runner_id", "status", "runner_id"),
        # The per-user limits count at every turn start: the user's turns in flight, and those of the last
        # minute. Without these, each count walks all of the user's turns.
        Index("ix_turns_user_id_status", "user_id", "status"),
        Index("ix_turns_user_id_created_at", "user_id", "created_at"),
    )


class UsageRecord(Base):
    """The cost ledger: one row per upstream response, never two (unique on the response id)."""

    __tablename__ = "usage_records"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(128), unique=True)
    # "turn": a round of the turn; "title": the session's automatic title, made after (and attached to) its first turn.
    kind: Mapped[str] = mapped_column(String(8), server_default="turn")
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[str] = mapped_column(String(40))
    prompt_id: Mapped[str | None] = mapped_column(String(128))
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    model_requested: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(128))  # as served, e.g. gpt-5-2025-08-07
    service_tier: Mapped[str | None] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(24))
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int | None] = mapped_column(BigInteger)
    total_tokens: Mapped[int | None] = mapped_column(BigInteger)
    web_search_calls: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # None when unknown (no usage, or no price for the model), never 0 for unknown.
    cost_usd: Mapped[Decimal | None] = mapped_column(Money())
    price_source: Mapped[str | None] = mapped_column(String(64))
    upstream_request_id: Mapped[str | None] = mapped_column(String(128))
    rate_limits: Mapped[dict[str, str] | None] = mapped_column(PortableJSON)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),)


class UserMonthlySpend(Base):
    """Spend per user and calendar month (UTC), kept with the ledger so a budget check is one row."""

    __tablename__ = "user_monthly_spend"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11"
    cost_usd: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RunnerHeartbeat(Base):
    """Each live Parley process beats here; turns of a runner that stopped beating are reconciled."""

    __tablename__ = "runner_heartbeats"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    beat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
