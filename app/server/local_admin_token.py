"""The embedded default's admin token: made once at first start, kept beside its SQLite file, owner-only."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy.engine import make_url

TOKEN_FILE_NAME = "admin-token"  # noqa: S105 (a file name, not a secret)


def token_path(database_url: str) -> Path | None:
    """`admin-token` in the SQLite database's directory; None for any other database (or an in-memory one)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).parent / TOKEN_FILE_NAME


def load_or_create(path: Path) -> str:
    """The token in `path`, written there first (mode 0600) if there is none yet.

    A new user can then try the admin API without a restart: the token is there from the first start, and
    `export PARLEY_ADMIN_TOKEN=$(cat var/admin-token)` is all it takes. Removing the file (or the whole
    `var/`) makes a new one at the next start.
    """
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL: two servers starting at once never overwrite each other's token; the loser reads the winner's.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    return token
