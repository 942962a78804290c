"""session options and tools: Responses options and tools for every turn of a session

Revision ID: a7d3e9f1c2b5
Revises: e1f4a7c2d9b6
Create Date: 2026-12-07 17:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# revision identifiers, used by Alembic.
revision: str = "a7d3e9f1c2b5"
down_revision: str | Sequence[str] | None = "e1f4a7c2d9b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", JSON, server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("tools", JSON, server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("tools")
        batch_op.drop_column("options")
