"""Short-lived tokens scoped to one turn's event stream.

A browser's EventSource cannot send an Authorization header, so `turn.stream_url` carries one of these in
its query string: it grants reading that one turn's events and nothing else, and expires.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

import jwt

from app.errors import AuthenticationFailed
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

    def issue(self, *, user_id: str, session_id: str, turn_id: str) -> str:
        now = dt.datetime.now(dt.UTC)
        claims = {
            "typ": TOKEN_TYPE,
            "sub": user_id,
            "sid": session_id,
            "tid": turn_id,
            "iat": now,
            "exp": now + self._ttl,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str, *, session_id: str, turn_id: str) -> str:
        """Returns the user id the token was issued to, if it is for exactly this turn."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub", "tid"]})
        except jwt.ExpiredSignatureError as error:
            raise AuthenticationFailed("The stream token has expired.", code="token_expired") from error
        except jwt.PyJWTError as error:
            raise AuthenticationFailed("Invalid stream token.", code="invalid_token") from error
        if claims.get("typ") != TOKEN_TYPE or claims.get("tid") != turn_id or claims.get("sid") != session_id:
            raise AuthenticationFailed("This stream token is for another stream.", code="invalid_token")
        return str(claims["sub"])
