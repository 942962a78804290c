"""Full-text search objects the ORM does not map: Postgres-only columns and SQLite's FTS5 tables."""

from __future__ import annotations

from sqlalchemy import column, table

# Postgres text search configuration. 'simple' lowercases words and keeps every one of them: no stemming and no
# stop words. Users write in many languages, and 'english' would stem German or Portuguese words wrongly and
# drop "the", "who" or "it" from a search; 'simple' also finds what SQLite's FTS5 (unicode61, no stemmer) finds.
SEARCH_CONFIG = "simple"

# `info` of a column or index that exists on Postgres only (the tsvector columns and their GIN indexes).
POSTGRES_ONLY = {"only_on": "postgresql"}

# SQLite's FTS5 external-content tables (created and kept in step by triggers in the migration), and the shadow
# tables FTS5 makes for each: not Parley's ORM, so autogenerate and `alembic check` leave them be.
MESSAGES_FTS = table("messages_fts", column("rowid"))
SESSIONS_FTS = table("sessions_fts", column("rowid"))
SQLITE_FTS_TABLES = (MESSAGES_FTS.name, SESSIONS_FTS.name)


def in_schema_of(dialect: str, object_: object, name: str | None, type_: str, reflected: bool) -> bool:
    """Whether Alembic compares this object on `dialect`: not a Postgres-only one elsewhere, nor an FTS5 table."""
    info = getattr(object_, "info", None) or {}
    if not reflected and info.get("only_on") not in (None, dialect):
        return False
    return not (type_ == "table" and reflected and name is not None and name.startswith(SQLITE_FTS_TABLES))
