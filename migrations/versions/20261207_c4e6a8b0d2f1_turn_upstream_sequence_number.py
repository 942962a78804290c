"""turn upstream sequence number: how far a running turn relayed its background response

With background responses upstream (`PARLEY_UPSTREAM_BACKGROUND`), a turn's stream can be re-attached after
any sequence number. The runner keeps the last one it relayed in memory and stores it with its heartbeat, beside
the response ids, so that another process can go on from there. Nullable: finished turns, non-background turns
and a response whose position was not stored yet (then: from the start).

Revision ID: c4e6a8b0d2f1
Revises: b8d2f4a6c1e3
Create Date: 2026-12-07 16:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c4e6a8b0d2f1"
down_revision: str | Sequence[str] | None = "b8d2f4a6c1e3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_sequence_number", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("last_sequence_number")
