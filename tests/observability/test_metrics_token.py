"""`/metrics` behind PARLEY_METRICS_TOKEN: 401 without a bearer token, 403 with a wrong one, both in the
contract's error envelope."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import RunningParley, run_parley
from tests.observability.scrape import scrape

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def guarded(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, metrics_token=METRICS_TOKEN) as running:
        yield running


@pytest.fixture
async def scraper(guarded: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=guarded.base_url, timeout=30) as client:
        yield client


def _assert_envelope(response: httpx.Response, status: int, type_: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "param"}
    assert body["error"]["type"] == type_
    assert "parley_" not in response.text
    assert response.headers["X-Request-ID"]


async def test_no_token_is_401(scraper: httpx.AsyncClient) -> None:
    response = await scraper.get("/metrics")
    _assert_envelope(response, 401, "authentication_error")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    # Another scheme is no bearer token either.
    _assert_envelope(await scraper.get("/metrics", auth=("prometheus", METRICS_TOKEN)), 401, "authentication_error")


async def test_a_wrong_token_is_403(scraper: httpx.AsyncClient) -> None:
    for wrong in ("wrong", METRICS_TOKEN + "x", METRICS_TOKEN[:-1]):
        _assert_envelope(
            await scraper.get("/metrics", headers={"Authorization": f"Bearer {wrong}"}), 403, "permission_error"
        )


async def test_the_token_opens_it(scraper: httpx.AsyncClient) -> None:
    scraped = await scrape(scraper, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert "parley_open_streams" in scraped.names()


async def test_health_stays_open(scraper: httpx.AsyncClient) -> None:
    assert (await scraper.get("/healthz")).status_code == 200
    assert (await scraper.get("/readyz")).status_code == 200
