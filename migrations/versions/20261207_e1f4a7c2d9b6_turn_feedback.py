"""turn feedback: a rating (up or down) and a comment per turn, from the person who asked

Revision ID: e1f4a7c2d9b6
Revises: c4e6a8b0d2f1
Create Date: 2026-12-07 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

# revision identifiers, used by Alembic.
revision: str = "e1f4a7c2d9b6"
down_revision: str | Sequence[str] | None = "c4e6a8b0d2f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("feedback_rating", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("feedback_comment", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("feedback_updated_at", app.db.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("feedback_updated_at")
        batch_op.drop_column("feedback_comment")
        batch_op.drop_column("feedback_rating")
