"""message items: the Responses items that make up each message, and an assistant message's model

Nullable: messages stored before them have only their text (served as one text item).

Revision ID: b9e2c7a4d1f6
Revises: f2a8c5d1e7b3
Create Date: 2026-12-07 17:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "b9e2c7a4d1f6"
down_revision: str | Sequence[str] | None = "f2a8c5d1e7b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# recreate="never": on SQLite a rebuilt `messages` would lose the triggers that keep its full-text index in step.
def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.add_column(
            sa.Column(
                "items", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
            )
        )
        batch_op.add_column(sa.Column("model", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("model")
        batch_op.drop_column("items")
