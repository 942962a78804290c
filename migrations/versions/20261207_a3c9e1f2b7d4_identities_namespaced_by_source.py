"""identities namespaced by their source: a user's name is unique per source (API keys, each JWT issuer)

Until now a JWT's `sub` and an API-key user's name shared one namespace: a token with `sub: "alice"` was the
API-key user "alice". `users.source` now says which namespace a user belongs to, and the name is unique in it
(`uq_users_source_name` replaces `uq_users_name`):
- `api_key`: users made by the admin API or `parley keys create --user NAME`. Existing users that have an API
  key (revoked or not) go here.
- `jwt:<issuer>`: the subjects of tokens from that issuer, when an issuer is configured (PARLEY_JWT_ISSUER);
  `jwt` when none is, one namespace for every token the deployment accepts. Every other existing user (they
  were made by a JWT's first request) goes under the issuer configured when this migration runs, read as
  Parley reads it: the environment variable PARLEY_JWT_ISSUER, else that line of a `.env` file in the working
  directory; unset or empty, `jwt` (no issuer configured). Run it with the deployment's configuration, or
  the existing JWT users are put under another issuer than their next tokens' (and start afresh).

Downgrade: the names become globally unique again; where two users share a name, the API-key user keeps it
and the others get their id appended ("alice user_…"), so nothing is lost or merged.

Revision ID: a3c9e1f2b7d4
Revises: 7d41e0c93b58
Create Date: 2026-12-07 11:00:00

"""

import os
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from dotenv import dotenv_values

# revision identifiers, used by Alembic.
revision: str = "a3c9e1f2b7d4"
down_revision: str | Sequence[str] | None = "7d41e0c93b58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

API_KEY_SOURCE = "api_key"


def jwt_source() -> str:
    """As `app.services.auth.jwt_source` names the configured issuer's namespace (written out here: a revision
    keeps doing what it did when it landed)."""
    issuer = os.environ.get("PARLEY_JWT_ISSUER")
    if issuer is None and Path(".env").is_file():
        issuer = dotenv_values(".env").get("PARLEY_JWT_ISSUER")
    return f"jwt:{issuer}" if issuer else "jwt"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("source", sa.Text(), nullable=True))
    op.execute(
        sa.text(
            "UPDATE users SET source = :source WHERE EXISTS (SELECT 1 FROM api_keys WHERE api_keys.user_id = users.id)"
        ).bindparams(source=API_KEY_SOURCE)
    )
    op.execute(sa.text("UPDATE users SET source = :source WHERE source IS NULL").bindparams(source=jwt_source()))
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("source", existing_type=sa.Text(), nullable=False)
        batch_op.drop_constraint("uq_users_name", type_="unique")
        batch_op.create_unique_constraint("uq_users_source_name", ["source", "name"])


def downgrade() -> None:
    # 255 characters at most: the name's first 200, a space and the id (at most 40).
    op.execute(
        sa.text(
            "UPDATE users SET name = substr(name, 1, 200) || ' ' || id "
            "WHERE source <> :api_key AND name IN (SELECT name FROM users GROUP BY name HAVING count(*) > 1)"
        ).bindparams(api_key=API_KEY_SOURCE)
    )
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_constraint("uq_users_source_name", type_="unique")
        batch_op.create_unique_constraint("uq_users_name", ["name"])
        batch_op.drop_column("source")
