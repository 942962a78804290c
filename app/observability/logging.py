"""Log output: JSON lines in production (`PARLEY_LOG_FORMAT=json`), readable text in development.

One handler on the root logger, so Parley's own lines, uvicorn's (its access log included) and the
libraries' all pass the same filter and formatter: every line carries the request id (and the upstream's
x-request-id inside a turn once known), and whatever reaches the output is scrubbed of bearer credentials,
API keys, JWTs and `token=` query values. Scrubbing is the safety net, not the rule: code logs ids, never
keys, and message bodies only at DEBUG.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.observability.context import request_id_var, upstream_request_id_var
from app.settings import Settings

_SECRETS = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s'\",;]+"), r"\1 [redacted]"),
    (re.compile(r"\b(sk-|pk_)[A-Za-z0-9_-]{8,}"), r"\1[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)([?&](?:token|api_key|key|access_token|secret)=)[^&\s'\"]+"), r"\1[redacted]"),
)
# Every pattern above starts with one of these: one search of the text instead of one pass per pattern, and
# the patterns only run on the rare line that has something to scrub.
_MAYBE_SECRET = re.compile(r"(?i:bearer)|sk-|pk_|eyJ|(?i:[?&](?:token|api_key|key|access_token|secret)=)")
# What a LogRecord has before anyone adds `extra` fields to it.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
    "upstream_request_id",
    "color_message",  # uvicorn's copy of its message with terminal colours
}
# JSON fields whose string values Parley makes itself (names, ids, statuses): nothing to scrub there.
# Everything else is scrubbed: the message (formatted with its arguments, the access line's path and query
# among them), tracebacks, the request id a client may choose, error texts and any field added later.
_CLEAN_FIELDS = frozenset(
    {
        "time",
        "level",
        "logger",
        "upstream_request_id",
        "turn_id",
        "session_id",
        "conversation_id",
        "response_id",
        "status",
        "method",
        "client",
        "code",
        "event",
        "action",
    }
)
# Libraries that log at INFO once per request (httpx2: "HTTP Request: POST … 200 OK" for every upstream
# call; the SDK: its retries): WARNING unless Parley logs at DEBUG.
_CHATTY_LIBRARIES = ("httpx", "httpx2", "openai")
_ACCESS_LOGGER = "uvicorn.access"


def redact(text: str) -> str:
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class ContextFilter(logging.Filter):
    """Puts the request id and the upstream request id of the current context on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "upstream_request_id", None) is None:
            upstream = upstream_request_id_var.get()
            if upstream is not None:
                record.upstream_request_id = upstream
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id] message key=value …`, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        line = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}
        upstream = getattr(record, "upstream_request_id", None)
        if upstream is not None:
            fields = {"upstream_request_id": upstream, **fields}
        if fields:
            head, newline, rest = line.partition("\n")  # keep a traceback below the fields
            line = head + "".join(f" {key}={_text_value(value)}" for key, value in fields.items()) + newline + rest
        return redact(line)


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in "\"'=" for c in text) else text


class ParleyJsonFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, request_id, then the record's fields."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.setdefault("request_id", None)
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            # uvicorn's access line as fields too: client, method, path, HTTP version, status.
            client, method, path, _, status = args
            log_data.update(client=client, method=method, path=path, status=status)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        first = ("time", "level", "logger", "message", "request_id", "upstream_request_id")
        ordered = {key: log_data[key] for key in first if key in log_data}
        ordered.update((key, value) for key, value in log_data.items() if key not in ordered)
        for key, value in ordered.items():
            if key not in _CLEAN_FIELDS and isinstance(value, str):
                ordered[key] = redact(value)
        return ordered


class ParleyLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler `configure_logging` installs (and replaces when called again).

    An access line is formatted and written on the event loop's next turn, once the response head it reports
    is on its way: uvicorn logs it just before writing the head, and a JSON line formatted and written there
    was ~0.1 ms on every response's time to its first byte (on a stream, to its first token). The request id
    is taken from the request's context at once; the lines keep their order."""

    def handle(self, record: logging.LogRecord) -> bool:
        if record.name == _ACCESS_LOGGER:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                if getattr(record, "request_id", None) is None:
                    record.request_id = request_id_var.get()
                loop.call_soon(super().handle, record)
                return True
        return super().handle(record)


class AlembicContextFilter(logging.Filter):
    """Alembic says which dialect it uses, and that its DDL is transactional, each time it opens a migration
    context: every `/readyz` opens one to read the revision, so a probe every few seconds would log two lines
    that say nothing new. Its other lines (the migrations it runs) stay."""

    NOISE = frozenset({"Context impl %s.", "Will assume %s DDL."})

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "alembic.runtime.migration" and record.msg in self.NOISE)


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records through one handler on the root logger; returns that handler."""
    handler = ParleyLogHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(ParleyJsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(AlembicContextFilter())
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, ParleyLogHandler)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    quiet = root.getEffectiveLevel() > logging.DEBUG
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    return handler
