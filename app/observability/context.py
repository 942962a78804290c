"""The ids a log line carries, as context variables.

The request id is set by `RequestIdMiddleware` for the whole of a request; a turn's task is spawned from
the request that started it, so it inherits that id. The upstream request id is set inside a turn's task
once the upstream answered, and so never leaks into the request's own context or another turn's.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"
# What an incoming X-Request-ID must look like to be kept: short, and safe in a header and a log line.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("parley_request_id", default=None)
upstream_request_id_var: ContextVar[str | None] = ContextVar("parley_upstream_request_id", default=None)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def is_valid_request_id(value: str) -> bool:
    return _VALID_REQUEST_ID.fullmatch(value) is not None


def bind_upstream_request_id(value: str | None) -> None:
    """Note the upstream's x-request-id for the rest of the current task's log lines."""
    upstream_request_id_var.set(value)
