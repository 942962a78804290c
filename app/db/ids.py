"""Prefixed, time-ordered ids (`sess_…`, `msg_…`).

UUIDv7 keeps ids sortable by creation time, so cursor pagination is a plain `id > :after` on the
primary key index, with no tie-breaking on timestamps.
"""

from __future__ import annotations

from uuid6 import uuid7


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid7().hex}"
