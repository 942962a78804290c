"""What reaches the log besides Parley's own lines: libraries' per-request lines only when debugging, and
credentials scrubbed from every free-text field of a JSON line (not only the message)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.db.engine import build_engine
from app.db.migrate import current_revision, upgrade
from app.observability.logging import configure_logging
from app.settings import Settings

LIBRARIES = ("httpx", "httpx2", "openai")


@contextmanager
def _logging_to_buffer(level: str, log_format: str = "text") -> Iterator[io.StringIO]:
    """configure_logging into a buffer, in this process; the loggers it touches are put back afterwards."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers), {name: logging.getLogger(name).level for name in LIBRARIES}
    buffer = io.StringIO()
    settings = Settings(_env_file=None, log_format=log_format, log_level=level)  # type: ignore[call-arg]
    handler = configure_logging(settings, stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, library_level in saved[2].items():
            logging.getLogger(name).setLevel(library_level)
        assert root.handlers == saved[1]


def _log_library_lines() -> None:
    logging.getLogger("httpx2").info('HTTP Request: POST http://upstream/v1/responses "HTTP/1.1 200 OK"')
    logging.getLogger("openai._base_client").info("Retrying request in 0.5 seconds (retry 1 of 2)")
    logging.getLogger("httpx2").warning("connection pool is full")


def test_per_request_lines_of_libraries_are_left_out_at_info() -> None:
    with _logging_to_buffer("INFO") as buffer:
        _log_library_lines()
        logging.getLogger("parley.test").info("turn.finished")
    text = buffer.getvalue()
    assert "HTTP Request" not in text
    assert "Retrying request" not in text
    assert "connection pool is full" in text
    assert "turn.finished" in text


def test_per_request_lines_of_libraries_are_kept_when_debugging() -> None:
    with _logging_to_buffer("DEBUG") as buffer:
        _log_library_lines()
    text = buffer.getvalue()
    assert "HTTP Request" in text
    assert "Retrying request" in text


def test_json_lines_scrub_credentials_from_every_free_text_field() -> None:
    key = "pk_0123456789abcdef"
    with _logging_to_buffer("INFO", log_format="json") as buffer:
        try:
            raise ValueError(f"upstream said: invalid key {key}")
        except ValueError:
            logging.getLogger("parley.test").exception(
                "turn.failed", extra={"turn_id": "turn_1", "error": "Authorization: Bearer s3cr3t-value"}
            )
    line = buffer.getvalue()
    assert key not in line
    assert "s3cr3t-value" not in line
    record = json.loads(line)
    assert record["turn_id"] == "turn_1"
    assert record["error"] == "Authorization: Bearer [redacted]"
    assert "pk_[redacted]" in record["exc_info"]


async def test_reading_the_schema_revision_logs_nothing_but_migrating_still_does(tmp_path: Path) -> None:
    """`/readyz` reads the revision on every probe: that must not log; running the migrations still says so."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}"
    engine = build_engine(url)
    try:
        with _logging_to_buffer("INFO") as buffer:
            await upgrade(engine)
            migrated = buffer.getvalue()
            for _ in range(3):
                assert await current_revision(engine) is not None
    finally:
        await engine.dispose()
    assert "Running upgrade" in migrated
    assert buffer.getvalue() == migrated
