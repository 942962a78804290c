"""The machine's Redis for the runs of Parley with its event log on Redis: a database index of the run's own,
empty when claimed and flushed at the end, so that nothing else on that server is read or removed.

`PARLEY_BENCH_REDIS` names the server (default redis://127.0.0.1:6379); a database number in it (…/6379/7) is
used if it is empty, else the highest-numbered empty one is (applications default to the low ones).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis

ADMIN_URL = os.environ.get("PARLEY_BENCH_REDIS", "redis://127.0.0.1:6379")
# Set in the claimed database at once, so that a second run started meanwhile sees it taken.
CLAIM_KEY = "parley-bench:claimed"
CLAIM_TTL_S = 24 * 3600


class RedisUnavailable(Exception):
    pass


def requested_database(url: str) -> int | None:
    """The database number in a redis:// URL's path, if it has one."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else None


def pick_database(sizes: Mapping[int, int], count: int, requested: int | None) -> int | None:
    """The database the run may use, from the keys in each non-empty one (`sizes`) and how many the server
    has: `requested` if it is empty, else the highest-numbered empty one; None if there is none."""
    if requested is not None:
        return requested if requested < count and not sizes.get(requested) else None
    return next((index for index in range(count - 1, -1, -1) if not sizes.get(index)), None)


def with_database(url: str, index: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, parts.fragment))


@dataclass(frozen=True)
class Claimed:
    url: str  # for PARLEY_REDIS_URL
    index: int
    version: str


def claim(admin_url: str = ADMIN_URL) -> Claimed:
    """An empty database of the server at `admin_url`, marked as this run's. Raises RedisUnavailable."""
    try:
        client = redis.Redis.from_url(with_database(admin_url, 0), socket_timeout=5, socket_connect_timeout=2)
        with client:
            version = str(client.info("server").get("redis_version", "?"))
            try:
                count = int(client.config_get("databases").get("databases") or 16)
            except redis.ResponseError:  # CONFIG renamed or refused: Redis's default
                count = 16
            taken: set[int] = set()
            while True:
                sizes = {
                    int(name[2:]): int(stats["keys"])
                    for name, stats in client.info("keyspace").items()
                    if name.startswith("db")
                }
                sizes.update(dict.fromkeys(taken, 1))
                index = pick_database(sizes, count, requested_database(admin_url))
                if index is None:
                    raise RedisUnavailable(f"no empty database on {admin_url} ({count} databases)")
                mine = redis.Redis.from_url(with_database(admin_url, index), socket_timeout=5)
                with mine:
                    if mine.set(CLAIM_KEY, uuid.uuid4().hex, nx=True, ex=CLAIM_TTL_S):
                        return Claimed(url=with_database(admin_url, index), index=index, version=version)
                taken.add(index)
    except (redis.RedisError, OSError) as error:
        raise RedisUnavailable(f"{admin_url}: {error}") from error


def release(claimed: Claimed) -> int:
    """Flush the claimed database (Parley's streams of the run and the claim); returns the keys it held."""
    client = redis.Redis.from_url(claimed.url, socket_timeout=10)
    with client:
        keys = int(client.dbsize())
        client.flushdb()
        return keys
