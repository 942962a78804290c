"""Who is calling: a Parley API key, a JWT from the deployment's identity provider, or the admin token."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import LRUCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.engine import engine_of
from app.errors import AuthenticationFailed, PermissionDenied
from app.repositories import user_repository as users_repo
from app.services.api_keys import hash_key, looks_like_api_key
from app.services.open_streams import KeyStreams
from app.settings import Settings

logger = logging.getLogger(__name__)

MAX_CREDENTIAL_LENGTH = 8192
HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]
ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
# Bounded, so a flood of distinct valid credentials cannot grow it without limit.
AUTH_CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    via: str  # "api_key" | "jwt" | "stream_token"
    # The API key used, itself or through a stream token made with it: revoking it ends what it opened.
    # None for a JWT.
    key_id: str | None = None
    key_hash: str | None = None


def jwt_source(issuer: str | None) -> str:
    """The namespace (`User.source`) of a JWT's subjects: its issuer's, or one for every token the deployment
    accepts when no issuer is configured. Never API-key users': a subject is not the API-key user of that name."""
    return f"jwt:{issuer}" if issuer else "jwt"


class Authenticator:
    """Verifies bearer credentials. One per app; holds the JWKS cache."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._jwks = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=600, timeout=5) if settings.jwks_url else None
        )
        # Who an API key hash or a JWT subject is, and since when (monotonic): every request authenticates,
        # and a lookup costs a pool checkout and a round trip before the first token. Only successes are
        # cached. Trusted for `auth_cache_ttl_s`, or `auth_cache_notified_ttl_s` while this replica hears
        # every revoke as it is made (`app.services.revocations`).
        self._known: LRUCache[str, tuple[Principal, float]] | None = (
            LRUCache(AUTH_CACHE_ENTRIES) if settings.auth_cache_ttl_s > 0 else None
        )
        self._ttl_s = settings.auth_cache_ttl_s
        # A key's id and hash never change: the hash of a key a stream token names, to look it up in `_known`.
        self._key_hashes: LRUCache[str, str] = LRUCache(AUTH_CACHE_ENTRIES)
        # The event streams open on this replica by API key: a revoke heard here ends them.
        self.key_streams = KeyStreams()
        # Bumped by every forget: a lookup that read the database before a revoke landed does not cache its
        # (then stale) answer when it returns after the revoke was heard.
        self._forgets = 0

    async def authenticate(self, credential: str | None) -> Principal:
        if not credential or len(credential) > MAX_CREDENTIAL_LENGTH:
            raise AuthenticationFailed()
        if looks_like_api_key(credential):
            return await self._from_api_key(credential)
        if credential.count(".") == 2:
            return await self._from_jwt(credential)
        raise AuthenticationFailed()

    def is_admin(self, credential: str) -> bool:
        token = self._settings.admin_token.get_secret_value() if self._settings.admin_token is not None else ""
        return bool(token) and hmac.compare_digest(credential.encode(), token.encode())

    def check_admin(self, credential: str | None) -> None:
        """Admin routes: the admin token, or 401/403. Without one configured no credential is the admin's, and the
        answer says how to turn the admin API on (which tells a caller nothing but that it is off)."""
        if self._settings.admin_token is None or not self._settings.admin_token.get_secret_value():
            raise PermissionDenied(
                "The admin API is off on this deployment: set PARLEY_ADMIN_TOKEN to turn it on, and send that "
                "token as the bearer credential.",
                code="admin_api_disabled",
            )
        if not credential:
            raise AuthenticationFailed()
        if not self.is_admin(credential):
            raise PermissionDenied("Admin routes need the admin token.", code="admin_only")

    def forget_key(self, key_hash: str) -> None:
        """A revoked key stops working on this replica at once (others: when they hear of it, or within the
        cache's TTL), and the streams it opened here, itself or through a stream token, end."""
        self._forgets += 1
        if self._known is not None:
            self._known.pop(key_hash, None)
        self.key_streams.end(key_hash)

    def revocations_heard(self, heard: bool) -> None:
        """Whether every revoke now reaches this replica as it is made: then cached keys are trusted for
        longer. Starting to hear them, forget everything: a revoke may have been missed before."""
        if heard and self._known is not None:
            self._forgets += 1
            self._known.clear()
        settings = self._settings
        self._ttl_s = (
            max(settings.auth_cache_notified_ttl_s, settings.auth_cache_ttl_s) if heard else settings.auth_cache_ttl_s
        )

    def _recall(self, cache_key: str) -> Principal | None:
        if self._known is None:
            return None
        known = self._known.get(cache_key)
        if known is None:
            return None
        principal, since = known
        if time.monotonic() - since > self._ttl_s:
            self._known.pop(cache_key, None)
            return None
        return principal

    def _remember(self, cache_key: str, principal: Principal, forgets_before: int) -> None:
        """Cache what a lookup found, unless something was forgotten while it ran (`forgets_before`)."""
        if self._known is not None and self._forgets == forgets_before:
            self._known[cache_key] = (principal, time.monotonic())

    async def _from_api_key(self, credential: str) -> Principal:
        key_hash = hash_key(credential)
        if (known := self._recall(key_hash)) is not None:
            return known
        forgets_before = self._forgets
        # Its own statement: the request's database session stays untouched until needed.
        owner = await users_repo.find_key_owner(engine_of(self._sessionmaker), key_hash)
        if owner is None:
            raise AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        principal = _key_holder(owner)
        self._remember(key_hash, principal, forgets_before)
        return principal

    async def key_holder(self, key_id: str) -> Principal:
        """Who holds the API key with this id, while it is not revoked: a stream token made with a key works
        only as long as the key does. Through the same cache as the key itself, so a revoke heard here ends
        the token at once."""
        key_hash = self._key_hashes.get(key_id)
        if key_hash is not None and (known := self._recall(key_hash)) is not None:
            return known
        forgets_before = self._forgets
        owner = await users_repo.find_key_owner_by_id(engine_of(self._sessionmaker), key_id)
        if owner is None:
            raise AuthenticationFailed("The API key this stream token was made with was revoked.", code="invalid_token")
        self._key_hashes[key_id] = owner.key_hash
        principal = _key_holder(owner)
        self._remember(owner.key_hash, principal, forgets_before)
        return principal

    async def _from_jwt(self, token: str) -> Principal:
        claims = await self._verify_jwt(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255 or "\x00" in subject:
            raise AuthenticationFailed("The token has no usable 'sub' claim.", code="invalid_token")
        # With an issuer configured, the token's own was checked against it.
        source = jwt_source(claims.get("iss") if self._settings.jwt_issuer else None)
        # Users are never deleted, so the subject's user id can be remembered; the token itself is verified
        # on every request.
        cache_key = "\x00".join(("jwt", source, subject))
        if (known := self._recall(cache_key)) is not None:
            return known
        forgets_before = self._forgets
        async with self._sessionmaker() as db, db.begin():
            user = await users_repo.get_or_create_user(db, source=source, name=subject)
        principal = Principal(user_id=user.id, name=user.name, via="jwt")
        self._remember(cache_key, principal, forgets_before)
        return principal

    async def _verify_jwt(self, token: str) -> dict[str, Any]:
        settings = self._settings
        options = {"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None}
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if self._jwks is not None and algorithm in ASYMMETRIC_ALGORITHMS:
                # PyJWKClient fetches with blocking urllib; keep it off the event loop.
                signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                key: Any = signing_key.key
                allowed = [a for a in settings.jwt_algorithms if a in ASYMMETRIC_ALGORITHMS]
            elif settings.jwt_secret is not None and algorithm in HMAC_ALGORITHMS:
                key = settings.jwt_secret.get_secret_value()
                allowed = [a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS]
            else:
                raise AuthenticationFailed("Token algorithm not accepted.", code="invalid_token")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=allowed,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                options=options,  # type: ignore[arg-type]
                leeway=30,
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthenticationFailed("The token has expired.", code="token_expired") from error
        except (jwt.PyJWTError, ValueError) as error:
            logger.info("auth.jwt_rejected", extra={"reason": type(error).__name__})
            raise AuthenticationFailed("Invalid token.", code="invalid_token") from error
        return claims


def _key_holder(owner: users_repo.KeyOwner) -> Principal:
    return Principal(
        user_id=owner.user_id, name=owner.name, via="api_key", key_id=owner.key_id, key_hash=owner.key_hash
    )
