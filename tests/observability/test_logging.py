"""Logs: JSON lines from `parley serve` with PARLEY_LOG_FORMAT=json, each with its request id, the upstream's
id beside it in a turn, and no key, token or message text at INFO; readable text otherwise."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from app.observability.context import request_id_var, upstream_request_id_var
from app.observability.logging import configure_logging, redact
from app.settings import Settings
from tests.servers import free_port

PARLEY = str(Path(sys.executable).parent / "parley")
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
    env.update(
        PARLEY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}",
        PARLEY_SPOOL_DIR=str(tmp_path / "spool"),
        PARLEY_ADMIN_TOKEN=ADMIN_TOKEN,
        PARLEY_LOG_LEVEL="INFO",
        # The embedded simulator answers at a model's pace by default; these tests read logs, not the pace.
        PARLEY_SIMULATOR_SPEED="instant",
        **extra,
    )
    return env


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`parley serve` in JSON log mode; yields its URL and the file its stderr goes to (read after it stops)."""
    port = free_port()
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [PARLEY, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=_serve_env(tmp_path, PARLEY_LOG_FORMAT="json"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"parley serve did not start: {log_path.read_text()}")
            time.sleep(0.1)
        yield base_url, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _records(log_path: Path) -> list[dict[str, Any]]:
    parsed = []
    for line in log_path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)  # every line is one JSON object
            assert isinstance(record, dict), line
            assert {"time", "level", "logger", "message", "request_id"} <= set(record), line
            parsed.append(record)
    return parsed


def _records_once(log_path: Path, seen: Any) -> list[dict[str, Any]]:
    """The log once `seen(records)` holds: the turn's last line is written just after its terminal event."""
    deadline = time.monotonic() + 10
    while True:
        records = _records(log_path)
        if seen(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_json_logs_of_a_served_turn(served: tuple[str, Path]) -> None:
    base_url, log_path = served
    secret_text = f"my private question {uuid.uuid4().hex}"
    trace = f"trace-{uuid.uuid4().hex}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        user_id = http.post("/v1/admin/users", json={"name": "logged"}, headers=admin).json()["id"]
        key = http.post(f"/v1/admin/users/{user_id}/keys", json={}, headers=admin).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        session_id = http.post("/v1/sessions", json={}, headers=auth).json()["id"]
        events: list[Any] = []
        with connect_sse(
            http,
            "POST",
            f"/v1/sessions/{session_id}/messages",
            json={"input": secret_text},
            headers=auth | {"X-Request-ID": trace},
        ) as source:
            assert source.response.headers["X-Request-ID"] == trace
            events = [json.loads(sse.data) for sse in source.iter_sse()]
        turn = events[-1]["turn"]
        assert turn["status"] == "completed"
        # The stream token travels in the query string, so it must not reach the access log.
        stream_url = turn["stream_url"]
        stream_token = httpx.URL(stream_url).params["token"]
        assert http.get(stream_url).status_code == 200
        wrong_key = "pk_" + uuid.uuid4().hex
        assert http.get("/v1/sessions", headers={"Authorization": f"Bearer {wrong_key}"}).status_code == 401

    records = _records_once(log_path, lambda rs: any(r["message"] == "turn.finished" for r in rs))
    raw = log_path.read_text()

    ours = [r for r in records if r["request_id"] == trace]
    access = [r for r in ours if r["logger"] == "uvicorn.access"]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["path"] == f"/v1/sessions/{session_id}/messages"
    assert access[0]["status"] == 200
    finished = [r for r in ours if r["message"] == "turn.finished"]
    assert len(finished) == 1
    assert finished[0]["turn_id"] == turn["id"]
    assert finished[0]["status"] == "completed"
    assert finished[0]["upstream_request_id"].startswith("req_")
    assert finished[0]["upstream_request_id"] != trace
    # Every access line carries a request id; other requests got generated ones.
    assert all(r["request_id"] for r in records if r["logger"] == "uvicorn.access" and "/simulator" not in r["path"])
    events_line = [r for r in records if r["logger"] == "uvicorn.access" and "/events" in r["path"]]
    assert len(events_line) == 1
    assert "token=[redacted]" in events_line[0]["path"]

    for secret in (key, wrong_key, ADMIN_TOKEN, stream_token, secret_text, turn["output_text"]):
        assert secret not in raw


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """configure_logging into a buffer, in this process; the root logger is put back afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffer = io.StringIO()
    settings = Settings(_env_file=None, log_format="text", log_level="INFO")  # type: ignore[call-arg]
    handler = configure_logging(settings, stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        assert root.handlers == handlers


def test_text_logs_are_readable_lines_with_the_ids(text_log: io.StringIO) -> None:
    logger = logging.getLogger("parley.test")
    request_token = request_id_var.set("req_text")
    upstream_token = upstream_request_id_var.set("req_upstream")
    try:
        logger.info("turn.finished", extra={"turn_id": "turn_1", "status": "completed", "note": "two words"})
        logger.debug("hidden at INFO")
    finally:
        upstream_request_id_var.reset(upstream_token)
        request_id_var.reset(request_token)
    logger.warning("outside.a_request")

    lines = text_log.getvalue().splitlines()
    assert len(lines) == 2
    assert " INFO    parley.test [req_text] turn.finished" in lines[0]
    assert lines[0].endswith(' upstream_request_id=req_upstream turn_id=turn_1 status=completed note="two words"')
    assert "[-] outside.a_request" in lines[1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_the_safety_net_scrubs_credentials(text_log: io.StringIO) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    logging.getLogger("parley.test").warning(
        "GET /v1/x?token=abc.def&limit=5 Authorization: Bearer %s key=%s jwt=%s",
        "admin-secret",
        "pk_abcdefghijklmnop",
        jwt,
    )
    line = text_log.getvalue()
    for secret in ("abc.def", "admin-secret", "abcdefghijklmnop", jwt):
        assert secret not in line
    assert "token=[redacted]&limit=5" in line
    assert redact("sk-proj-0123456789abcdef") == "sk-[redacted]"
