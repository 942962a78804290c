"""tell the planner that `parley_locked_limit_counts` returns one row (Postgres)

A set-returning function is planned as returning 1,000 rows unless it says otherwise. The counted turn start
(`app.repositories.turns.start_counted_turn`) joins the function's one row of counts to the session and
inserts from that join, so every estimate after it was a thousand-fold too high: the session's counter
update was planned as a scan of the whole sessions table and a hash join (found in session 11). The update
now also names the session by its key; this puts the estimates right for every plan that reads the counts.

Revision ID: 5c0e2d9f7a41
Revises: bb2100c2b941
Create Date: 2026-12-04 19:20:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5c0e2d9f7a41"
down_revision: str | Sequence[str] | None = "bb2100c2b941"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "parley_locked_limit_counts(varchar, timestamptz, varchar, varchar[])"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {SIGNATURE} ROWS 1")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {SIGNATURE} ROWS 1000")
