"""Prefixed, time-ordered ids (`sess_…`, `msg_…`).

UUIDv7 keeps ids sortable by creation time, so cursor pagination is a plain `id > :after` on the
primary key index, with no tie-breaking on timestamps.
"""

from __future__ import annotations

import re

from uuid6 import uuid7

ID_PATTERN = re.compile(r"^[a-z]{2,8}_[0-9a-f]{32}$")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid7().hex}"


def looks_like_id(value: str, prefix: str) -> bool:
    return value.startswith(f"{prefix}_") and ID_PATTERN.match(value) is not None
