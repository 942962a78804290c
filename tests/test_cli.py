"""The `parley` command as a newcomer uses it: serve on the embedded default, keys, migrate."""

from __future__ import annotations

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

from tests.conftest import run_parley
from tests.databases import postgres_database
from tests.servers import free_port

PARLEY = str(Path(sys.executable).parent / "parley")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
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
        # No admin token configured: the simulator's control routes are not there at all.
        assert httpx.get(f"{base_url}/simulator/_control/requests", timeout=5).status_code == 404
    output = served.output
    assert (tmp_path / "var" / "parley.db").is_file()
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
            assert not_ready.json()["error"]["code"] == "migrations_pending"

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


@pytest.mark.parametrize("command", [["--help"], ["serve", "--help"], ["keys", "create", "--help"]])
def test_help(command: list[str]) -> None:
    result = subprocess.run([PARLEY, *command], capture_output=True, text=True, env=_env())
    assert result.returncode == 0
    assert "usage: parley" in result.stdout
