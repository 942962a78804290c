"""Shared fixtures: a migrated database per backend and a real Parley server on a loopback port.

Every test that takes `parley` runs twice, on SQLite and on Postgres. Tests stay independent by
working as users of their own (each `user` fixture makes a fresh one), not by resetting the database.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.databases import BACKENDS, database
from tests.servers import free_port, serve

ADMIN_TOKEN = "test-admin-token-" + uuid.uuid4().hex


@dataclass(frozen=True)
class RunningParley:
    base_url: str
    settings: Settings
    backend: str

    @property
    def simulator_url(self) -> str:
        return f"{self.base_url}/simulator"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "admin_token": ADMIN_TOKEN,
        "openai_api_key": None,
        "openai_base_url": None,
        "public_base_url": None,
        "spool_dir": Path(tempfile.mkdtemp(prefix="parley-spool-")),
        # Tests send many turns quickly; the limits have tests of their own.
        "rate_limit_turns_per_minute": 0,
        "rate_limit_concurrent_turns": 0,
        # The embedded simulator answers at a model's pace by default; tests ask for a pace when they need one.
        "simulator_speed": "instant",
        # A first turn's title is one more upstream call, after the turn: tests that count upstream calls or queue
        # simulator faults would meet it. tests/api/test_titles.py turns titles on.
        "title_model": "off",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def run_parley(database_url: str, backend: str, **overrides: Any) -> Iterator[RunningParley]:
    """Parley on the embedded default (simulator mounted on itself) unless overridden."""
    port = free_port()
    if not overrides.get("openai_base_url") and not overrides.get("openai_api_key"):
        # The embedded default: the simulator mounted on this same server.
        overrides["openai_base_url"] = f"http://127.0.0.1:{port}/simulator/v1"
    settings = make_settings(database_url, **overrides)
    with serve(create_app(settings), port=port) as base_url:
        yield RunningParley(base_url=base_url, settings=settings, backend=backend)


@pytest.fixture(scope="session", params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    directory: Path = tmp_path_factory.mktemp("db")
    async with database(request.param, directory) as url:
        yield url


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


@pytest.fixture(scope="session")
def parley(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend) as running:
        yield running


@pytest.fixture
async def client(parley: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as http:
        yield http


@dataclass(frozen=True)
class ApiUser:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def create_api_user(http: httpx.AsyncClient, name: str | None = None) -> ApiUser:
    name = name or f"user-{uuid.uuid4().hex[:10]}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    created = await http.post("/v1/admin/users", json={"name": name}, headers=admin)
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    key = await http.post(f"/v1/admin/users/{user_id}/keys", json={}, headers=admin)
    assert key.status_code == 201, key.text
    return ApiUser(id=user_id, name=name, key=key.json()["key"])


@pytest.fixture
async def user(client: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(client)


@pytest.fixture
async def other_user(client: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(client)
