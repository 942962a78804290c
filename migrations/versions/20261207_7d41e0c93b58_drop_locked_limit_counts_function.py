"""drop `parley_locked_limit_counts` (Postgres): the limits are counted by one query, in the start's transaction

A turn's start now locks the owner's row and counts in two statements of one transaction (READ COMMITTED:
the count's snapshot is taken after the lock, so it sees what the lock's previous holder committed); the
limit rule is written once, in `app/services/limits.py`, and the function that counted for the one-statement
start is no longer called.

Revision ID: 7d41e0c93b58
Revises: 5c0e2d9f7a41
Create Date: 2026-12-07 10:30:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "7d41e0c93b58"
down_revision: str | Sequence[str] | None = "5c0e2d9f7a41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "parley_locked_limit_counts(varchar, timestamptz, varchar, varchar[])"
# The function as revisions bb2100c2b941 and 5c0e2d9f7a41 left it, for the downgrade.
LOCKED_LIMIT_COUNTS = """
CREATE FUNCTION parley_locked_limit_counts(
    p_user_id varchar, p_since timestamptz, p_month varchar, p_in_flight_statuses varchar[]
)
RETURNS TABLE (in_flight bigint, recent bigint, oldest_recent timestamptz, month_spend numeric)
LANGUAGE plpgsql VOLATILE ROWS 1
AS $$
BEGIN
    PERFORM 1 FROM users WHERE users.id = p_user_id FOR NO KEY UPDATE;
    RETURN QUERY SELECT
        (SELECT count(*) FROM turns
          WHERE turns.user_id = p_user_id AND turns.status = ANY (p_in_flight_statuses)),
        (SELECT count(*) FROM turns WHERE turns.user_id = p_user_id AND turns.created_at >= p_since),
        (SELECT min(turns.created_at) FROM turns WHERE turns.user_id = p_user_id AND turns.created_at >= p_since),
        (SELECT user_monthly_spend.cost_usd FROM user_monthly_spend
          WHERE user_monthly_spend.user_id = p_user_id AND user_monthly_spend.month = p_month);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LOCKED_LIMIT_COUNTS)
