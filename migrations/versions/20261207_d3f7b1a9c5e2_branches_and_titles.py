"""branches and titles: the message tree, every conversation of a session, a turn's user message, title sources
and the ledger's kinds

Existing histories become one branch each: every message's parent is the one before it in the session, all of
them on the active branch and in the session's conversation.

Revision ID: d3f7b1a9c5e2
Revises: b9e2c7a4d1f6
Create Date: 2026-12-07 19:05:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

# revision identifiers, used by Alembic.
revision: str = "d3f7b1a9c5e2"
down_revision: str | Sequence[str] | None = "b9e2c7a4d1f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# recreate="never" for messages and sessions: on SQLite a rebuilt table would lose the triggers that keep its
# full-text index in step.
def upgrade() -> None:
    op.create_table(
        "session_conversations",
        sa.Column("conversation_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_session_conversations_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_session_conversations")),
    )
    with op.batch_alter_table("session_conversations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_conversations_session_id"), ["session_id"], unique=False)

    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("conversation_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("on_active_branch", sa.Boolean(), server_default=sa.text("true"), nullable=False))
        batch_op.create_index("ix_messages_parent_id", ["parent_id"], unique=False)

    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("title_source", sa.String(length=8), nullable=True))

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_id", sa.String(length=40), nullable=True))

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=8), server_default="turn", nullable=False))

    # Message ids are time-ordered (UUIDv7): the one before is the greatest smaller id of the session.
    op.execute(
        "UPDATE messages SET parent_id = (SELECT earlier.id FROM messages AS earlier"
        " WHERE earlier.session_id = messages.session_id AND earlier.id < messages.id"
        " ORDER BY earlier.id DESC LIMIT 1),"
        " conversation_id = (SELECT sessions.conversation_id FROM sessions WHERE sessions.id = messages.session_id)"
    )
    op.execute(
        "UPDATE turns SET message_id = (SELECT messages.id FROM messages"
        " WHERE messages.turn_id = turns.id AND messages.role = 'user' LIMIT 1)"
    )
    op.execute("UPDATE sessions SET title_source = 'user' WHERE title IS NOT NULL")
    op.execute(
        "INSERT INTO session_conversations (conversation_id, session_id, created_at)"
        " SELECT conversation_id, id, created_at FROM sessions"
    )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("kind")

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("message_id")

    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("title_source")

    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_messages_parent_id")
        batch_op.drop_column("on_active_branch")
        batch_op.drop_column("conversation_id")
        batch_op.drop_column("parent_id")

    with op.batch_alter_table("session_conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_conversations_session_id"))

    op.drop_table("session_conversations")
