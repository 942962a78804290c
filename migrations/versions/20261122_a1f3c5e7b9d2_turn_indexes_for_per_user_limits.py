"""turn indexes for the per-user limits: (user_id, status) and (user_id, created_at)

Every turn start counts the user's turns in flight and those of the last minute when a limit is set (the
default); without these indexes each count walked all of the user's turns.

Revision ID: a1f3c5e7b9d2
Revises: e635031d9ff2
Create Date: 2026-11-22 05:40:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "a1f3c5e7b9d2"
down_revision: str | Sequence[str] | None = "e635031d9ff2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


INDEXES = {"ix_turns_user_id_status": ["user_id", "status"], "ix_turns_user_id_created_at": ["user_id", "created_at"]}


def upgrade() -> None:
    # IF NOT EXISTS: on a large turns table an operator can build them first with CREATE INDEX CONCURRENTLY
    # (same names and columns) while replicas keep serving; the migration's own build locks out writes to
    # turns while it runs, and it runs in the migration's transaction.
    for name, columns in INDEXES.items():
        op.create_index(name, "turns", columns, if_not_exists=True)


def downgrade() -> None:
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="turns")
