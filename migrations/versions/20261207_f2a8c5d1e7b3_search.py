"""search: full-text indexes over session titles and message content (Postgres tsvector + GIN; SQLite FTS5)

Revision ID: f2a8c5d1e7b3
Revises: a7d3e9f1c2b5
Create Date: 2026-12-07 18:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "f2a8c5d1e7b3"
down_revision: str | Sequence[str] | None = "a7d3e9f1c2b5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 'simple': every word kept as written (lowercased), no stemming, no stop words; users write in many languages, and
# it finds what SQLite's FTS5 finds. Written out here rather than imported: a landed revision never changes.
MESSAGE_VECTOR = "to_tsvector('simple'::regconfig, content)"
TITLE_VECTOR = "to_tsvector('simple'::regconfig, (COALESCE(title, ''::character varying))::text)"

# SQLite: FTS5 tables over the rows of messages and sessions (external content: the text is stored once, in its
# own table), kept in step by triggers. A later batch migration that rebuilds one of these tables drops its
# triggers with the old table: it must create them again and rebuild the index. VACUUM renumbers the rowids of
# tables without an INTEGER PRIMARY KEY; after one, rebuild: INSERT INTO messages_fts(messages_fts) VALUES('rebuild').
SQLITE_UP = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='rowid')",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
    END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
    END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
    END""",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    "CREATE VIRTUAL TABLE sessions_fts USING fts5(title, content='sessions', content_rowid='rowid')",
    """CREATE TRIGGER sessions_fts_insert AFTER INSERT ON sessions BEGIN
        INSERT INTO sessions_fts(rowid, title) VALUES (new.rowid, new.title);
    END""",
    """CREATE TRIGGER sessions_fts_delete AFTER DELETE ON sessions BEGIN
        INSERT INTO sessions_fts(sessions_fts, rowid, title) VALUES ('delete', old.rowid, old.title);
    END""",
    """CREATE TRIGGER sessions_fts_update AFTER UPDATE OF title ON sessions BEGIN
        INSERT INTO sessions_fts(sessions_fts, rowid, title) VALUES ('delete', old.rowid, old.title);
        INSERT INTO sessions_fts(rowid, title) VALUES (new.rowid, new.title);
    END""",
    "INSERT INTO sessions_fts(sessions_fts) VALUES ('rebuild')",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS sessions_fts_update",
    "DROP TRIGGER IF EXISTS sessions_fts_delete",
    "DROP TRIGGER IF EXISTS sessions_fts_insert",
    "DROP TABLE IF EXISTS sessions_fts",
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
        return
    # Generated and stored: computed once per write, never per search; the GIN index is built over it.
    op.add_column(
        "messages", sa.Column("content_tsv", postgresql.TSVECTOR(), sa.Computed(MESSAGE_VECTOR, persisted=True))
    )
    op.create_index("ix_messages_content_tsv", "messages", ["content_tsv"], postgresql_using="gin")
    op.add_column("sessions", sa.Column("title_tsv", postgresql.TSVECTOR(), sa.Computed(TITLE_VECTOR, persisted=True)))
    op.create_index("ix_sessions_title_tsv", "sessions", ["title_tsv"], postgresql_using="gin")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
        return
    op.drop_index("ix_sessions_title_tsv", table_name="sessions", postgresql_using="gin")
    op.drop_column("sessions", "title_tsv")
    op.drop_index("ix_messages_content_tsv", table_name="messages", postgresql_using="gin")
    op.drop_column("messages", "content_tsv")
