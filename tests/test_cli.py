"""The `parley` command as a newcomer uses it: serve on the embedded default, keys, migrate, and what it says
when something is in the way (one line, never a traceback)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningParley, create_api_user, run_parley
from tests.databases import database, postgres_database
from tests.observability.scrape import scrape_until
from tests.servers import free_port
from tests.turns.helpers import new_session, open_stream, simulator_for, sse_events

PARLEY = str(Path(sys.executable).parent / "parley")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
    # The embedded simulator answers at a model's pace by default; these tests are about the command.
    env["PARLEY_SIMULATOR_SPEED"] = "instant"
    env.update(extra)
    return env


@dataclass
class ServedParley:
    base_url: str
    output: str = ""


@contextmanager
def parley_serve(cwd: Path, env: dict[str, str]) -> Iterator[ServedParley]:
    port = free_port()
    process = subprocess.Popen(
        [PARLEY, "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = ServedParley(base_url=f"http://127.0.0.1:{port}")
    base_url = served.base_url
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"parley serve did not start: {process.communicate()[0]}")
            time.sleep(0.1)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            served.output = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            served.output = process.communicate()[0]


def _create_key(cwd: Path, env: dict[str, str], user: str) -> str:
    result = subprocess.run(
        [PARLEY, "keys", "create", "--user", user], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def test_serve_on_the_embedded_default(tmp_path: Path) -> None:
    """No key, no configuration: SQLite file + simulator, and a first session works."""
    env = _env()
    key = _create_key(tmp_path, env, "alice")
    assert key.startswith("pk_")
    with parley_serve(tmp_path, env) as served:
        base_url = served.base_url
        headers = {"Authorization": f"Bearer {key}"}
        created = httpx.post(f"{base_url}/v1/sessions", json={"title": "first"}, headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        assert created.json()["conversation_id"].startswith("conv_")
        listed = httpx.get(f"{base_url}/v1/sessions", headers=headers, timeout=10).json()
        assert [s["title"] for s in listed["data"]] == ["first"]
        assert httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
        # No admin token configured: one is made, kept owner-only beside the database, and the admin API and
        # the simulator's control routes take it (and nothing else).
        token_file = tmp_path / "var" / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        admin = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert httpx.get(f"{base_url}/simulator/_control/requests", timeout=5).status_code == 401
        assert httpx.get(f"{base_url}/simulator/_control/requests", headers=admin, timeout=5).status_code == 200
        assert httpx.get(f"{base_url}/v1/admin/users", headers=admin, timeout=5).status_code == 200
    output = served.output
    assert (tmp_path / "var" / "parley.db").is_file()
    # Once up, it says where the playground and the docs are, how to make a key and where the token is.
    ready = "\n".join(line for line in output.splitlines() if "parley.ready" in line)
    assert f"{base_url}/docs" in ready, output
    assert "parley keys create" in ready
    assert "var/admin-token" in ready
    assert token_file.read_text().strip() not in output
    embedded_lines = [line for line in output.splitlines() if "embedded_default" in line]
    assert len(embedded_lines) == 1, output
    assert "simulator" in embedded_lines[0]
    assert key not in output


def test_serve_with_a_key_uses_openai_and_mounts_no_simulator(tmp_path: Path) -> None:
    env = _env(OPENAI_API_KEY="sk-test-not-real", PARLEY_LOG_LEVEL="INFO")
    with parley_serve(tmp_path, env) as served:
        base_url = served.base_url
        assert httpx.get(f"{base_url}/simulator/_control/requests", timeout=5).status_code == 404
        assert httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
    output = served.output
    assert "embedded_default" not in output
    assert "https://api.openai.com/v1" in output
    assert "sk-test-not-real" not in output


def test_keys_create_prints_the_key_alone_on_its_last_line(tmp_path: Path) -> None:
    env = _env()
    first = _create_key(tmp_path, env, "bob")
    second = _create_key(tmp_path, env, "bob")
    assert first != second
    assert first.startswith("pk_")
    assert " " not in first
    result = subprocess.run(
        [PARLEY, "keys", "create", "--user", ""], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0


async def test_migrate_brings_postgres_to_ready(tmp_path: Path) -> None:
    async with postgres_database(migrate=False) as url:
        with run_parley(url, "postgres") as running:
            not_ready = httpx.get(f"{running.base_url}/readyz", timeout=5)
            assert not_ready.status_code == 503
            assert not_ready.json()["error"]["code"] == "database_not_migrated"
            assert "parley migrate" in not_ready.json()["error"]["message"]

            result = subprocess.run(
                [PARLEY, "migrate"], cwd=tmp_path, env=_env(PARLEY_DATABASE_URL=url), capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
            assert "migrated" in result.stdout

            ready = httpx.get(f"{running.base_url}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/parley"
    with run_parley(url, "postgres") as running:
        assert httpx.get(f"{running.base_url}/healthz", timeout=5).status_code == 200
        response = httpx.get(f"{running.base_url}/readyz", timeout=15)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "database_unreachable"


def test_the_standalone_simulator_will_not_open_its_control_routes_beyond_loopback() -> None:
    result = subprocess.run(
        [PARLEY, "simulator", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert result.returncode == 2
    assert "PARLEY_ADMIN_TOKEN" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["serve", "--help"],
        ["keys", "create", "--help"],
        ["keys", "list", "--help"],
        ["keys", "revoke", "-h"],
    ],
)
def test_help(command: list[str]) -> None:
    result = subprocess.run([PARLEY, *command], capture_output=True, text=True, env=_env())
    assert result.returncode == 0
    assert "usage: parley" in result.stdout


def test_version() -> None:
    result = subprocess.run([PARLEY, "--version"], capture_output=True, text=True, env=_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"parley {importlib.metadata.version('parley')}"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["serve"], ["--host HOST", "(default: 127.0.0.1)", "--port PORT", "(default: 8000)"]),
        (
            ["serve"],
            ["PARLEY_DATABASE_URL", "sqlite+aiosqlite:///var/parley.db", "OPENAI_API_KEY", "PARLEY_ADMIN_TOKEN"],
        ),
        (["serve"], ["PARLEY_SPOOL_DIR", "var/spool", "parley migrate"]),
        (["migrate"], ["PARLEY_DATABASE_URL", "PARLEY_MIGRATIONS_DIR"]),
        (["keys", "list"], ["--user USER", "PARLEY_DATABASE_URL"]),
        (["keys", "revoke"], ["KEY_ID", "PARLEY_DATABASE_URL"]),
    ],
)
def test_help_shows_defaults_and_the_environment(command: list[str], shown: list[str]) -> None:
    result = subprocess.run([PARLEY, *command, "--help"], capture_output=True, text=True, env=_env())
    assert result.returncode == 0
    for words in shown:
        assert words in result.stdout, result.stdout


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command: exit status 1 and one line on stderr, nothing else said."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _cli(cwd: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARLEY, *args], cwd=cwd, env=_env(PARLEY_DATABASE_URL=database_url), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_keys_list_and_revoke(tmp_path: Path, backend: str) -> None:
    async with database(backend, tmp_path) as url:
        created = [
            _cli(tmp_path, url, "keys", "create", "--user", "carol", "--name", name) for name in ("laptop", "ci")
        ]
        secrets = [result.stdout.strip().splitlines()[-1] for result in created]
        key_ids = [result.stdout.split("Created API key ")[1].split()[0] for result in created]

        listed = _cli(tmp_path, url, "keys", "list", "--user", "carol")
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.strip().splitlines()
        assert header.split() == ["KEY", "ID", "NAME", "STARTS", "WITH", "CREATED", "REVOKED"]
        assert [row.split()[:2] for row in rows] == [[key_ids[0], "laptop"], [key_ids[1], "ci"]]
        assert all(row.split()[-1] == "no" for row in rows)
        # The key itself is shown once, at creation: a listing has its first characters only, never its hash.
        from app.services.api_keys import hash_key

        for secret in secrets:
            assert secret not in listed.stdout
            assert hash_key(secret) not in listed.stdout
            assert secret[:10] in listed.stdout

        revoked = _cli(tmp_path, url, "keys", "revoke", key_ids[0])
        assert revoked.returncode == 0, revoked.stderr
        assert key_ids[0] in revoked.stdout
        again = _cli(tmp_path, url, "keys", "revoke", key_ids[0])
        assert again.returncode == 0, again.stderr
        assert "already revoked" in again.stdout
        rows = _cli(tmp_path, url, "keys", "list", "--user", "carol").stdout.strip().splitlines()[1:]
        assert rows[0].split()[-1].startswith("20")  # when it was revoked
        assert rows[1].split()[-1] == "no"

        unknown_user = _one_error_line(_cli(tmp_path, url, "keys", "list", "--user", "nobody"))
        assert "nobody" in unknown_user
        unknown_key = _one_error_line(_cli(tmp_path, url, "keys", "revoke", "key_nothing"))
        assert "key_nothing" in unknown_key


async def _cli_async(parley: RunningParley, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, cwd, parley.settings.database_url, *args)


@pytest.mark.timeout(60)
async def test_a_revoke_from_the_command_line_reaches_the_running_server(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    """As the admin API's revoke: the server stops taking the key and ends the streams it opened (Postgres tells the
    server as the revoke commits; a SQLite server reads it within a second or two). A server of its own: the
    shared one's LISTEN connection may have been cut by another test, unnoticed for up to its ping interval."""
    with run_parley(database_url, backend) as parley:
        async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
            await _revoke_while_streaming(parley, client, tmp_path)


async def _revoke_while_streaming(parley: RunningParley, client: httpx.AsyncClient, tmp_path: Path) -> None:
    sim = simulator_for(parley, client)
    if parley.backend == "postgres":
        await scrape_until(client, lambda scraped: scraped.value("parley_auth_revocations_listening") == 1)
    # A turn of ~20 s: still streaming when the key is revoked.
    await sim.configure(tokens_per_second=20, first_token_delay_ms=0, output_tokens=400)
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    path = f"/v1/sessions/{session_id}/messages"
    async with open_stream(client, "POST", path, json={"input": "a long one"}, headers=user.headers) as opened:
        stream, source = opened
        assert stream.status == 200
        events = aiter(sse_events(source))
        names = [(await anext(events)).event for _ in range(3)]
        assert names[0] == "turn.created"

        listed = await _cli_async(parley, tmp_path, "keys", "list", "--user", user.name)
        [key_id] = [row.split()[0] for row in listed.stdout.strip().splitlines()[1:]]
        revoked = await _cli_async(parley, tmp_path, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr

        async with asyncio.timeout(5):
            names += [sse.event async for sse in events]
        assert "turn.completed" not in names  # cut, not finished
    refused = await client.get("/v1/sessions", headers=user.headers)
    assert refused.status_code == 401


async def test_commands_on_a_database_they_cannot_use(tmp_path: Path) -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/parley"
    unreachable = _one_error_line(_cli(tmp_path, nowhere, "keys", "list", "--user", "carol"))
    assert "cannot use the database" in unreachable
    assert "PARLEY_DATABASE_URL" in unreachable
    _one_error_line(_cli(tmp_path, nowhere, "migrate"))
    async with postgres_database(migrate=False) as url:
        for command in (["keys", "list", "--user", "carol"], ["keys", "create", "--user", "carol"]):
            not_migrated = _one_error_line(_cli(tmp_path, url, *command))
            assert "not migrated" in not_migrated
            assert "parley migrate" in not_migrated


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({}, ["var/parley.db", "var is a file", "PARLEY_DATABASE_URL"]),
        (
            {"PARLEY_DATABASE_URL": "sqlite+aiosqlite:///{blocked}/sub/parley.db"},
            ["sub/parley.db", "PARLEY_DATABASE_URL"],
        ),
        ({"PARLEY_SPOOL_DIR": "{blocked}/spool"}, ["spool", "PARLEY_SPOOL_DIR"]),
    ],
)
def test_serve_names_a_directory_it_cannot_write(tmp_path: Path, setting: dict[str, str], named: list[str]) -> None:
    """`var` (or any directory Parley writes to) is a file, or under one: root cannot write there either."""
    blocked = tmp_path / "var"
    blocked.write_text("a file where a directory should be\n")
    env = _env(**{name: value.format(blocked=blocked) for name, value in setting.items()})
    if setting:
        env.setdefault("PARLEY_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'db' / 'parley.db'}")
    result = subprocess.run(
        [PARLEY, "serve", "--port", str(free_port())], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    line = _one_error_line(result)
    for words in named:
        assert words in line
    assert result.stdout == ""
    if not setting:
        # Every command that opens the database says the same.
        assert (
            _one_error_line(
                subprocess.run(
                    [PARLEY, "keys", "create", "--user", "x"], cwd=tmp_path, env=env, capture_output=True, text=True
                )
            )
            == line
        )


async def test_an_unmigrated_postgres_says_so_once(tmp_path: Path) -> None:
    """A new, empty Postgres database: one log line that says to run `parley migrate`, and a 503 that says the
    same on every API route, not a 500 and a traceback per request and per background loop."""
    async with postgres_database(migrate=False) as url:
        env = _env(
            PARLEY_DATABASE_URL=url,
            PARLEY_ADMIN_TOKEN="admin-token-for-this-test",
            # The runner's loops go round many times while the test runs.
            PARLEY_TURN_LEASE_S="0.4",
        )
        with parley_serve(tmp_path, env) as served:
            requests = [
                httpx.get(
                    f"{served.base_url}/v1/sessions", headers={"Authorization": "Bearer pk_anything"}, timeout=10
                ),
                httpx.post(
                    f"{served.base_url}/v1/admin/users",
                    json={"name": "dave"},
                    headers={"Authorization": "Bearer admin-token-for-this-test"},
                    timeout=10,
                ),
                httpx.get(
                    f"{served.base_url}/v1/admin/users",
                    headers={"Authorization": "Bearer admin-token-for-this-test"},
                    timeout=10,
                ),
            ]
            for response in requests:
                assert response.status_code == 503, response.text
                assert response.json() == {
                    "error": {
                        "type": "service_unavailable",
                        "code": "database_not_migrated",
                        "message": "The database is not migrated: run `parley migrate`.",
                        "param": None,
                    }
                }
            ready = httpx.get(f"{served.base_url}/readyz", timeout=10)
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "database_not_migrated"
            time.sleep(1)
        said = [
            line
            for line in served.output.splitlines()
            if any(word in line for word in ("not_migrated", "Traceback", "ERROR", "background_failed", "unhandled"))
        ]
        assert len(said) == 1, served.output
        assert "parley migrate" in said[0]


def test_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [PARLEY, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=_env(PARLEY_SECRET_KEY="too short"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = _one_error_line(result)
    assert "PARLEY_SECRET_KEY" in line
    assert "32 bytes" in line
