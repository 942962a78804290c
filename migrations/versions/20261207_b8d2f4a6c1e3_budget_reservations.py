"""budget reservations: what a turn's round may cost at most, held against its owner's budget while it runs

Under a monthly budget, a turn's start (and each later upstream round) reserves the most the round may cost
in `turns.reserved_usd`; other starts of the owner count what the turns in flight hold, so concurrent turns
cannot all be admitted against the same remainder. The turn's final write clears it as it adds the actual
cost. Nullable: turns that ended, and turns of users with no budget, hold nothing.

Revision ID: b8d2f4a6c1e3
Revises: a3c9e1f2b7d4
Create Date: 2026-12-07 11:05:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

# revision identifiers, used by Alembic.
revision: str = "b8d2f4a6c1e3"
down_revision: str | Sequence[str] | None = "a3c9e1f2b7d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reserved_usd", app.db.base.Money(precision=20, scale=10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("reserved_usd")
