"""Reading /metrics the way Prometheus does, with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(
            [
                (sample.name, dict(sample.labels), float(sample.value))
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            ]
        )

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 when there are none)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [labels for sample, labels, _ in self.samples if sample == name]

    def names(self) -> set[str]:
        return {sample for sample, _, _ in self.samples}


async def scrape(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> Scrape:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape.parse(response.text)


async def scrape_until(http: httpx.AsyncClient, ready: Callable[[Scrape], bool], timeout: float = 10) -> Scrape:
    """Some metrics move just after the client has its answer (a failed turn is counted once stored)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await scrape(http)
        if ready(current):
            return current
        assert asyncio.get_running_loop().time() < deadline, "metrics did not move in time"
        await asyncio.sleep(0.05)
