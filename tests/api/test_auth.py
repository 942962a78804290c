"""Bearer credentials on every /v1 route: Parley API keys, JWTs (HS256 secret or JWKS), the admin token."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.db.engine import build_engine, build_sessionmaker
from app.errors import AuthenticationFailed
from app.repositories import user_repository as users_repo
from app.services import api_keys
from app.services.auth import Authenticator
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN, ApiUser, RunningParley, create_api_user, run_parley
from tests.databases import sqlite_database
from tests.observability.scrape import scrape_until
from tests.servers import serve

JWT_SECRET = "jwt-test-secret-" + "x" * 32
ISSUER = "https://id.example.test/"
AUDIENCE = "parley-tests"

USER_ROUTES = [
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions"),
    ("GET", f"/v1/sessions/sess_{'0' * 32}"),
    ("PATCH", f"/v1/sessions/sess_{'0' * 32}"),
    ("DELETE", f"/v1/sessions/sess_{'0' * 32}"),
    ("GET", f"/v1/sessions/sess_{'0' * 32}/messages"),
]
ADMIN_ROUTES = [
    ("GET", "/v1/admin/users"),
    ("POST", "/v1/admin/users"),
    ("POST", f"/v1/admin/users/user_{'0' * 32}/keys"),
    ("GET", f"/v1/admin/users/user_{'0' * 32}/keys"),
    ("POST", f"/v1/admin/keys/key_{'0' * 32}/revoke"),
]


def _claims(**overrides: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "sub": f"jwt-user-{uuid.uuid4().hex[:8]}",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(("method", "path"), USER_ROUTES + ADMIN_ROUTES)
@pytest.mark.parametrize("credential", [None, "", "pk_not-a-real-key", "garbage", "a.b.c", "Basic abc"])
async def test_missing_or_bad_credentials_are_401(
    client: httpx.AsyncClient, parley: RunningParley, method: str, path: str, credential: str | None
) -> None:
    headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
    if credential == "":
        headers = {"Authorization": "Bearer"}
    elif credential == "Basic abc":
        headers = {"Authorization": credential}
    before = len((await client.get(f"{parley.simulator_url}/_control/requests", headers=parley.admin_headers)).json())
    response = await client.request(method, path, headers=headers, json={"title": "x"} if method != "GET" else None)
    if path.startswith("/v1/admin") and credential not in (None, "", "Basic abc"):
        assert response.status_code == 403  # a credential, but not the admin token
    else:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    after = len((await client.get(f"{parley.simulator_url}/_control/requests", headers=parley.admin_headers)).json())
    assert after == before  # nothing went upstream


async def test_user_key_cannot_use_admin_routes(client: httpx.AsyncClient, user: ApiUser) -> None:
    for method, path in ADMIN_ROUTES:
        response = await client.request(method, path, headers=user.headers, json={"name": "x"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_only"


async def test_admin_token_is_not_a_user_credential(client: httpx.AsyncClient, parley: RunningParley) -> None:
    response = await client.get("/v1/sessions", headers=parley.admin_headers)
    assert response.status_code == 401


async def test_revoked_key_stops_working_at_once(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    assert (await client.get("/v1/sessions", headers=user.headers)).status_code == 200
    keys = (await client.get(f"/v1/admin/users/{user.id}/keys", headers=parley.admin_headers)).json()["data"]
    assert len(keys) == 1
    assert "key" not in keys[0]  # never shown again
    assert user.key.startswith(keys[0]["prefix"])
    revoked = await client.post(f"/v1/admin/keys/{keys[0]['id']}/revoke", headers=parley.admin_headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await client.get("/v1/sessions", headers=user.headers)).status_code == 401


async def test_a_key_revoked_on_one_replica_is_refused_by_another_once_its_cache_expires(
    client: httpx.AsyncClient, parley: RunningParley, database_url: str, backend: str
) -> None:
    """Replicas remember a verified key for PARLEY_AUTH_CACHE_TTL_S; a revoke made elsewhere holds after it."""
    user = await create_api_user(client)
    with run_parley(database_url, backend, auth_cache_ttl_s=0.5) as other:
        async with httpx.AsyncClient(base_url=other.base_url, timeout=30) as replica:
            assert (await replica.get("/v1/sessions", headers=user.headers)).status_code == 200  # now cached there
            keys = (await client.get(f"/v1/admin/users/{user.id}/keys", headers=parley.admin_headers)).json()["data"]
            revoked = await client.post(f"/v1/admin/keys/{keys[0]['id']}/revoke", headers=parley.admin_headers)
            assert revoked.status_code == 200
            assert (await client.get("/v1/sessions", headers=user.headers)).status_code == 401
            await asyncio.sleep(0.6)
            assert (await replica.get("/v1/sessions", headers=user.headers)).status_code == 401


async def _revoke_all_keys(client: httpx.AsyncClient, parley: RunningParley, user: ApiUser) -> None:
    keys = (await client.get(f"/v1/admin/users/{user.id}/keys", headers=parley.admin_headers)).json()["data"]
    for key in keys:
        revoked = await client.post(f"/v1/admin/keys/{key['id']}/revoke", headers=parley.admin_headers)
        assert revoked.status_code == 200


async def _listening_is(replica: httpx.AsyncClient, value: float) -> None:
    await scrape_until(replica, lambda scraped: scraped.value("parley_auth_revocations_listening") == value)


@asynccontextmanager
async def _key_cached_on_a_listening_replica(
    client: httpx.AsyncClient, database_url: str, backend: str
) -> AsyncIterator[tuple[httpx.AsyncClient, ApiUser]]:
    """Another replica that trusts its key cache for five minutes, with a new user's key cached there."""
    if backend != "postgres":
        pytest.skip("LISTEN/NOTIFY is Postgres's; on SQLite the short cache bounds a revoke (the test above)")
    user = await create_api_user(client)
    with run_parley(database_url, backend, auth_cache_ttl_s=300, auth_cache_notified_ttl_s=300) as other:
        async with httpx.AsyncClient(base_url=other.base_url, timeout=30) as replica:
            await _listening_is(replica, 1)  # it forgets every key when it starts listening
            assert (await replica.get("/v1/sessions", headers=user.headers)).status_code == 200  # now cached there
            yield replica, user


async def _refused_within(replica: httpx.AsyncClient, user: ApiUser, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while (await replica.get("/v1/sessions", headers=user.headers)).status_code != 401:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_on_postgres_every_replica_hears_a_revoke_at_once_however_long_it_caches_keys(
    client: httpx.AsyncClient, parley: RunningParley, database_url: str, backend: str
) -> None:
    """Replicas listening for revokes may cache a key for minutes: the revoke reaches them as it commits."""
    async with _key_cached_on_a_listening_replica(client, database_url, backend) as (replica, user):
        await _revoke_all_keys(client, parley, user)
        assert await _refused_within(replica, user, 5.0)


async def test_a_replica_that_lost_its_revocations_connection_forgets_its_cached_keys(
    client: httpx.AsyncClient, parley: RunningParley, database_url: str, backend: str
) -> None:
    """A revoke made while a replica was not listening is not missed: listening again, it looks keys up anew."""
    async with _key_cached_on_a_listening_replica(client, database_url, backend) as (replica, user):
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as connection:
                # Every replica's listening connection to this database goes; its revokes are sent to no one.
                ended = await connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :database AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'"
                    ),
                    {"database": make_url(database_url).database},
                )
                assert ended.all()
                await _revoke_all_keys(client, parley, user)
                await _listening_is(replica, 0)
        finally:
            await engine.dispose()
        assert await _refused_within(replica, user, 10.0)


async def test_a_user_may_hold_several_keys_for_one_identity(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    second = await client.post(f"/v1/admin/users/{user.id}/keys", json={"name": "laptop"}, headers=parley.admin_headers)
    assert second.status_code == 201
    other_key = second.json()["key"]
    assert other_key != user.key
    created = await client.post("/v1/sessions", json={"title": "shared"}, headers=user.headers)
    seen = await client.get(f"/v1/sessions/{created.json()['id']}", headers={"Authorization": f"Bearer {other_key}"})
    assert seen.status_code == 200


async def test_admin_user_names_are_unique(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    again = await client.post("/v1/admin/users", json={"name": user.name}, headers=parley.admin_headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "user_exists"
    missing = await client.post(f"/v1/admin/users/user_{'f' * 32}/keys", json={}, headers=parley.admin_headers)
    assert missing.status_code == 404


# --- JWTs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks_url(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Iterator[str]:
    keys = []
    for kid, key, alg in (("rsa-1", rsa_key, "RS256"), ("ec-1", ec_key, "ES256")):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))  # type: ignore[attr-defined]
        keys.append(jwk | {"kid": kid, "use": "sig", "alg": alg})

    async def jwks(_: object) -> JSONResponse:
        return JSONResponse({"keys": keys})

    with serve(Starlette(routes=[Route("/.well-known/jwks.json", jwks)])) as url:
        yield f"{url}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def jwt_parley(database_url: str, backend: str, jwks_url: str) -> Iterator[RunningParley]:
    with run_parley(
        database_url,
        backend,
        jwt_secret=JWT_SECRET,
        jwks_url=jwks_url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    ) as running:
        yield running


@pytest.fixture
async def jwt_client(jwt_parley: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=jwt_parley.base_url, timeout=30) as http:
        yield http


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_hs256_jwt_creates_the_user_on_first_sight(jwt_client: httpx.AsyncClient) -> None:
    claims = _claims()
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    created = await jwt_client.post("/v1/sessions", json={"title": "via jwt"}, headers=_bearer(token))
    assert created.status_code == 201, created.text
    # A second token for the same subject is the same user.
    token2 = jwt.encode(_claims(sub=claims["sub"]), JWT_SECRET, algorithm="HS256")
    listed = await jwt_client.get("/v1/sessions", headers=_bearer(token2))
    assert [s["id"] for s in listed.json()["data"]] == [created.json()["id"]]
    # Another subject sees nothing of it.
    stranger = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    assert (await jwt_client.get(f"/v1/sessions/{created.json()['id']}", headers=_bearer(stranger))).status_code == 404


async def test_concurrent_first_requests_of_a_new_subject_make_one_user(jwt_client: httpx.AsyncClient) -> None:
    claims = _claims()
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    responses = await asyncio.gather(*(jwt_client.get("/v1/sessions", headers=_bearer(token)) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    users = (await jwt_client.get("/v1/admin/users", params={"limit": 100}, headers=admin)).json()
    assert [u["name"] for u in users["data"]].count(claims["sub"]) == 1


async def test_a_jwt_subject_and_the_api_key_user_of_the_same_name_are_two_people(
    jwt_client: httpx.AsyncClient,
) -> None:
    name = f"alice-{uuid.uuid4().hex[:8]}"
    keyed = await create_api_user(jwt_client, name)
    token = _bearer(jwt.encode(_claims(sub=name), JWT_SECRET, algorithm="HS256"))
    by_key = (await jwt_client.post("/v1/sessions", json={"title": "by key"}, headers=keyed.headers)).json()
    by_token = (await jwt_client.post("/v1/sessions", json={"title": "by token"}, headers=token)).json()

    seen_by_token = (await jwt_client.get("/v1/sessions", headers=token)).json()["data"]
    seen_by_key = (await jwt_client.get("/v1/sessions", headers=keyed.headers)).json()["data"]
    assert [s["id"] for s in seen_by_token] == [by_token["id"]]
    assert [s["id"] for s in seen_by_key] == [by_key["id"]]
    assert (await jwt_client.get(f"/v1/sessions/{by_key['id']}", headers=token)).status_code == 404
    assert (await jwt_client.get(f"/v1/sessions/{by_token['id']}", headers=keyed.headers)).status_code == 404
    deleted = await jwt_client.delete(f"/v1/sessions/{by_key['id']}", headers=token)
    assert deleted.status_code == 404

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    users = (await jwt_client.get("/v1/admin/users", params={"limit": 100}, headers=admin)).json()["data"]
    assert sorted(u["source"] for u in users if u["name"] == name) == ["api_key", f"jwt:{ISSUER}"]
    # The admin API makes API-key users: there the name is `keyed`'s.
    again = await jwt_client.post("/v1/admin/users", json={"name": name}, headers=admin)
    assert again.status_code == 409


async def test_without_a_configured_issuer_every_token_is_one_namespace(database_url: str, backend: str) -> None:
    with run_parley(database_url, backend, jwt_secret=JWT_SECRET) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as http:
            subject = f"dora-{uuid.uuid4().hex[:8]}"
            first = jwt.encode(_claims(sub=subject, iss="https://one.example/"), JWT_SECRET, algorithm="HS256")
            second = jwt.encode(_claims(sub=subject, iss="https://two.example/"), JWT_SECRET, algorithm="HS256")
            created = await http.post("/v1/sessions", json={}, headers=_bearer(first))
            assert created.status_code == 201, created.text
            listed = (await http.get("/v1/sessions", headers=_bearer(second))).json()["data"]
            assert [s["id"] for s in listed] == [created.json()["id"]]
            users = (await http.get("/v1/admin/users", params={"limit": 100}, headers=running.admin_headers)).json()
            assert [u["source"] for u in users["data"] if u["name"] == subject] == ["jwt"]


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_jwks_signed_tokens_are_accepted(
    jwt_client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, alg: str
) -> None:
    key, kid = (rsa_key, "rsa-1") if alg == "RS256" else (ec_key, "ec-1")
    token = jwt.encode(_claims(), key, algorithm=alg, headers={"kid": kid})
    response = await jwt_client.get("/v1/sessions", headers=_bearer(token))
    assert response.status_code == 200, response.text


def _bad_tokens(rsa_key: rsa.RSAPrivateKey) -> dict[str, str]:
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    unsigned = jwt.encode(_claims(), None, algorithm="none")  # type: ignore[arg-type]
    good = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    header, _payload, signature = good.split(".")
    tampered_payload = jwt.utils.base64url_encode(
        json.dumps(_claims(sub="someone-else"), default=str).encode()
    ).decode()
    return {
        "expired": jwt.encode(_claims(exp=past, iat=past - dt.timedelta(minutes=5)), JWT_SECRET, algorithm="HS256"),
        "wrong secret": jwt.encode(_claims(), "not-the-secret-" + "y" * 32, algorithm="HS256"),
        "wrong issuer": jwt.encode(_claims(iss="https://evil.example/"), JWT_SECRET, algorithm="HS256"),
        "wrong audience": jwt.encode(_claims(aud="someone-else"), JWT_SECRET, algorithm="HS256"),
        "no sub": jwt.encode(_claims(sub=None), JWT_SECRET, algorithm="HS256"),
        "no exp": jwt.encode(_claims(exp=None), JWT_SECRET, algorithm="HS256"),
        "alg none": unsigned,
        "tampered claims": f"{header}.{tampered_payload}.{signature}",
        "unknown jwks key": jwt.encode(_claims(), other_rsa, algorithm="RS256", headers={"kid": "rsa-1"}),
        "unknown kid": jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"}),
    }


async def test_bad_tokens_are_401(jwt_client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey) -> None:
    for name, token in _bad_tokens(rsa_key).items():
        response = await jwt_client.get("/v1/sessions", headers=_bearer(token))
        assert response.status_code == 401, f"{name}: {response.status_code} {response.text}"
        assert response.json()["error"]["type"] == "authentication_error", name


async def test_jwts_are_refused_where_none_are_configured(client: httpx.AsyncClient) -> None:
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    assert (await client.get("/v1/sessions", headers=_bearer(token))).status_code == 401


async def test_api_keys_still_work_beside_jwts(jwt_client: httpx.AsyncClient) -> None:
    user: ApiUser = await create_api_user(jwt_client)
    assert (await jwt_client.get("/v1/sessions", headers=user.headers)).status_code == 200


async def test_a_lookup_under_way_when_its_key_is_revoked_does_not_cache_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup read the key as valid, the revoke landed (and was heard) before it returned: the next request
    looks the key up again rather than trusting a cached answer for the cache's whole lifetime."""
    async with sqlite_database(tmp_path) as url:
        engine = build_engine(url)
        try:
            sessionmaker = build_sessionmaker(engine)
            async with sessionmaker() as db, db.begin():
                issued = await api_keys.issue_key_for_name(db, user_name=f"racer-{uuid.uuid4().hex[:6]}")
            settings = Settings(_env_file=None, database_url=url, auth_cache_ttl_s=300)  # type: ignore[call-arg]
            authenticator = Authenticator(settings, sessionmaker)
            read, release = asyncio.Event(), asyncio.Event()
            real_lookup = users_repo.find_key_owner

            async def slow_lookup(*args: Any) -> Any:
                owner = await real_lookup(*args)
                read.set()
                await release.wait()
                return owner

            monkeypatch.setattr(users_repo, "find_key_owner", slow_lookup)
            first = asyncio.create_task(authenticator.authenticate(issued.secret))
            await read.wait()
            async with sessionmaker() as db, db.begin():
                await users_repo.revoke_api_key(db, key_id=issued.record.id, at=dt.datetime.now(dt.UTC))
            authenticator.forget_key(issued.record.key_hash)
            release.set()
            assert (await first).user_id == issued.user.id  # it was valid when read
            with pytest.raises(AuthenticationFailed):
                await authenticator.authenticate(issued.secret)
        finally:
            await engine.dispose()
