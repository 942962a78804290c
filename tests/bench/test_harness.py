"""Where the harness puts Parley's replicas and how big their pools are, which Redis database it takes, and how
the load generator spreads its slots over replicas."""

from __future__ import annotations

import pytest

from bench.loadgen import LoadSpec
from bench.procs import replica_cores
from bench.redis_db import pick_database, requested_database, with_database
from bench.run import replica_pool_size


def test_each_replica_gets_a_core_of_its_own_where_the_machine_has_enough() -> None:
    assert replica_cores([0, 1, 2, 3], {0}, 2) == [{3}, {2}]
    assert replica_cores([0, 1, 2], {0}, 2) == [{2}, {1}]


def test_on_two_cores_the_second_replica_shares_the_drivers_core() -> None:
    assert replica_cores([0, 1], {0}, 2) == [{1}, {0}]
    assert replica_cores([0], {0}, 2) == [{0}, {0}]


def test_the_run_takes_the_highest_numbered_empty_redis_database() -> None:
    assert pick_database({}, 16, None) == 15
    assert pick_database({0: 12, 15: 3}, 16, None) == 14
    assert pick_database(dict.fromkeys(range(16), 1), 16, None) is None


def test_a_redis_database_named_in_the_url_is_used_only_if_it_is_empty() -> None:
    assert requested_database("redis://127.0.0.1:6379/7") == 7
    assert requested_database("redis://127.0.0.1:6379") is None
    assert pick_database({}, 16, 7) == 7
    assert pick_database({7: 1}, 16, 7) is None
    assert pick_database({}, 16, 16) is None
    assert with_database("redis://127.0.0.1:6379/7", 3) == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize("ports", [None, [8001, 8002]])
def test_the_load_generators_slots_alternate_between_replicas(ports: list[int] | None) -> None:
    request = {"path": "/v1/responses", "body": "{}"}
    spec = LoadSpec.from_json(
        {"host": "127.0.0.1", "port": 8001, "requests": [request], "concurrency": 4, "ports": ports}
    )
    expected = [8001, 8002, 8001, 8002] if ports else [8001] * 4
    assert [spec.slot_port(slot) for slot in range(4)] == expected


def test_replicas_keep_parleys_pool_size_while_postgres_has_room_for_them_all() -> None:
    # max_connections 100, 3 reserved, the harness's own connection open: room for two pools of 40.
    assert replica_pool_size(96, 2) == 40
    # Another session's tests hold 20 connections: the two pools shrink to fit, leaving some spare.
    assert replica_pool_size(76, 2) == 33
    assert replica_pool_size(0, 2) == 1
