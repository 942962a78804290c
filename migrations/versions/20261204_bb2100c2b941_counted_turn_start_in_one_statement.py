"""a function that locks a user's row, then counts what the per-user limits compare (Postgres)

A turn start with limits counting (the default) had to lock the owner's row in one statement and count in a
later one, so that under READ COMMITTED the counts see every turn the owner's other starts committed while
this one waited for the lock: BEGIN, the lock, the guarded insert, COMMIT, four round trips before the first
token. A VOLATILE function takes a fresh snapshot for each statement it runs, so called from the guarded
insert it does both in one statement, in autocommit (`app.repositories.turns.start_counted_turn`).

Revision ID: bb2100c2b941
Revises: a1f3c5e7b9d2
Create Date: 2026-12-04 16:40:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "bb2100c2b941"
down_revision: str | Sequence[str] | None = "a1f3c5e7b9d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The counts are those of `app.repositories.turns.LIMIT_COUNTS` (which SQLite runs as it is); the statuses that
# count as in flight are the caller's, so this body does not have to change with them.
LOCKED_LIMIT_COUNTS = """
CREATE FUNCTION parley_locked_limit_counts(
    p_user_id varchar, p_since timestamptz, p_month varchar, p_in_flight_statuses varchar[]
)
RETURNS TABLE (in_flight bigint, recent bigint, oldest_recent timestamptz, month_spend numeric)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    -- Concurrent starts of one user queue here, on any replica, until the holder's statement commits. NO KEY
    -- UPDATE: rows that only reference the user (a turn's ledger rows, a new session) need not wait for it.
    PERFORM 1 FROM users WHERE users.id = p_user_id FOR NO KEY UPDATE;
    -- A statement after the lock: its snapshot includes every turn the previous holder inserted.
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
        op.execute(LOCKED_LIMIT_COUNTS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION parley_locked_limit_counts(varchar, timestamptz, varchar, varchar[])")
