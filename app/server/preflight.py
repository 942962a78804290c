"""What the command line checks before it starts: the places on disk Parley writes to.

A directory Parley cannot write (a read-only volume, `var` that is a file, a path under a file) fails deep inside
the server's start as a traceback; found here first, it is one line that names the path and says what to do.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from app.settings import Settings


def _unwritable(directory: Path) -> str | None:
    """Why `directory` cannot be made or written to (the system's words), or None if it can."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a directory"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Root passes every permission check, so try it: a read-only file system or a file in the way stops root too.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".parley-write-check-"):
            pass
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite database file, or None (Postgres, or an in-memory database)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def database_problem(settings: Settings) -> str | None:
    """Why the SQLite database cannot be written where it is configured, in one line; None if it can (or is not
    SQLite)."""
    path = sqlite_path(settings)
    if path is None:
        return None
    # SQLite writes its journal beside the database: the directory must be writable, not only the file.
    reason = _unwritable(path.parent)
    if reason is None and path.exists() and not path.is_file():
        return (
            f"cannot use {path} as the SQLite database: it is not a file; move it away, or set PARLEY_DATABASE_URL "
            "to a database elsewhere"
        )
    if reason is None:
        try:
            with path.open("ab"):
                pass
        except OSError as error:
            reason = error.strerror or type(error).__name__
    if reason is not None:
        return (
            f"cannot write the SQLite database {path} ({reason}): make {path.parent} a writable directory, "
            "or set PARLEY_DATABASE_URL to a database elsewhere"
        )
    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as error:
        return (
            f"cannot open the SQLite database {path} ({error}): move the file away (a new one is made), "
            "or set PARLEY_DATABASE_URL to a database elsewhere"
        )
    return None


def spool_problem(settings: Settings) -> str | None:
    """Why the spool directory (where final turn writes wait while the database is down) cannot be written."""
    reason = _unwritable(settings.spool_dir)
    if reason is None:
        return None
    return (
        f"cannot write the spool directory {settings.spool_dir} ({reason}): make it a writable directory, "
        "or set PARLEY_SPOOL_DIR to one"
    )
