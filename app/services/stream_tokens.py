"""Short-lived tokens scoped to one turn's event stream.

A browser's EventSource cannot send an Authorization header, so `turn.stream_url` carries one of these in
its query string: it grants reading that one turn's events and nothing else, and expires. One made for a
caller with an API key names the key (by id) and works only while the key does: revoking the key ends the
token, and the streams opened with it, at once. One made for a JWT's user lasts its whole life.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

import jwt

from app.errors import AuthenticationFailed
from app.services.auth import Authenticator, Principal
from app.settings import Settings

logger = logging.getLogger(__name__)

TOKEN_TYPE = "parley.turn_stream"  # noqa: S105 (a claim value, not a secret)


class StreamTokens:
    def __init__(self, settings: Settings) -> None:
        if settings.secret_key is not None:
            self._secret = settings.secret_key.get_secret_value()
        else:
            # Fine for one process; replicas must share PARLEY_SECRET_KEY to honour each other's tokens.
            self._secret = secrets.token_urlsafe(32)
            logger.info("stream_tokens.ephemeral_secret: set PARLEY_SECRET_KEY when running several replicas")
        self._ttl = dt.timedelta(seconds=settings.stream_token_ttl_s)

    def issue(self, *, user_id: str, session_id: str, turn_id: str, key_id: str | None) -> str:
        """A token for this turn's events; `key_id`: the API key of the caller it is made for, if any."""
        now = dt.datetime.now(dt.UTC)
        claims: dict[str, object] = {
            "typ": TOKEN_TYPE,
            "sub": user_id,
            "sid": session_id,
            "tid": turn_id,
            "iat": now,
            "exp": now + self._ttl,
        }
        if key_id is not None:
            claims["key"] = key_id
        return jwt.encode(claims, self._secret, algorithm="HS256")

    async def verify(self, token: str, *, session_id: str, turn_id: str, authenticator: Authenticator) -> Principal:
        """The caller the token was made for, if it is for exactly this turn (and its key, if it names one, is
        not revoked)."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub", "tid"]})
        except jwt.ExpiredSignatureError as error:
            raise AuthenticationFailed("The stream token has expired.", code="token_expired") from error
        except jwt.PyJWTError as error:
            raise AuthenticationFailed("Invalid stream token.", code="invalid_token") from error
        if claims.get("typ") != TOKEN_TYPE or claims.get("tid") != turn_id or claims.get("sid") != session_id:
            raise AuthenticationFailed("This stream token is for another stream.", code="invalid_token")
        user_id = str(claims["sub"])
        key_id = claims.get("key")
        if key_id is None:
            return Principal(user_id=user_id, name="", via="stream_token")
        holder = await authenticator.key_holder(str(key_id))
        if holder.user_id != user_id:
            raise AuthenticationFailed("Invalid stream token.", code="invalid_token")
        return Principal(
            user_id=user_id, name=holder.name, via="stream_token", key_id=holder.key_id, key_hash=holder.key_hash
        )
