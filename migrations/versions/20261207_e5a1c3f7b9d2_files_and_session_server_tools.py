"""files and session server tools: uploaded files with their bytes and upstream copies, and the deployment's
tools a session may use

Revision ID: e5a1c3f7b9d2
Revises: d3f7b1a9c5e2
Create Date: 2026-12-07 20:12:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.db.base

# revision identifiers, used by Alembic.
revision: str = "e5a1c3f7b9d2"
down_revision: str | Sequence[str] | None = "d3f7b1a9c5e2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# recreate="never" for sessions: on SQLite a rebuilt table would lose the triggers of its full-text index.
def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("upstream_file_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", app.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("upstream_deleted_at", app.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_files_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index("ix_files_user_id_id", ["user_id", "id"], unique=False)

    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(
            sa.Column(
                "server_tools",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("server_tools")

    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_user_id_id")

    op.drop_table("files")
