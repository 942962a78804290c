"""Opening one streamed `responses.create` call and reading its raw bytes through the SDK's streaming response;
re-attaching to a background response's stream, and cancelling it.

The SDK's automatic retries are off for this call: a retry after OpenAI accepted the request would
append to the conversation and bill twice. Parley retries only where the upstream provably did not start:
the connection was refused, or a 429/503 came back before any body (honouring Retry-After up to a bound).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from app.errors import Conflict, InvalidRequest, ParleyError, RateLimited, UpstreamError, UpstreamTimeout
from app.upstream.failures import provably_not_started, timed_out, transport_error

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 503})
# The SDK's telemetry headers (its version; the platform's OS, architecture and Python; its retry count and read
# timeout), left out of the streamed call: the upstream needs none of them, and every header of the request is
# held, by httpx2 and by aiohttp, for as long as its stream is open (~4 KiB a stream).
NO_TELEMETRY_HEADERS: dict[str, str | openai.Omit] = dict.fromkeys(
    (
        "X-Stainless-Lang",
        "X-Stainless-Package-Version",
        "X-Stainless-OS",
        "X-Stainless-Arch",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Async",
        "X-Stainless-Retry-Count",
        "X-Stainless-Read-Timeout",
    ),
    openai.omit,
)


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    read_timeout_s: float
    connect_timeout_s: float
    max_attempts: int = 3
    max_retry_wait_s: float = 5.0


class UpstreamStream:
    """An open upstream response: its headers and request id now, its body's bytes as they arrive.

    Holds the HTTP response alone: the SDK's response wrappers keep a deep copy of the request's options for
    as long as they live, which an open stream would carry for its whole length (a few KiB per stream)."""

    __slots__ = ("_http_response", "request_id")

    def __init__(self, http_response: httpx2.Response, request_id: str | None) -> None:
        self._http_response = http_response
        self.request_id = request_id

    @property
    def headers(self) -> Mapping[str, str]:
        return self._http_response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. A read that waits longer than the policy's read timeout (a stall) or a lost
        connection raises one of `STREAM_READ_ERRORS`."""
        return self._http_response.aiter_bytes()

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the body was read to its end, closed otherwise."""
        await self._http_response.aclose()


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                return None
    return None


def streaming_client(client: openai.AsyncOpenAI, policy: StreamPolicy) -> openai.AsyncOpenAI:
    """`client` without retries and with the stream's timeouts, sharing its connection pool (build it once)."""
    # The read timeout is the stall bound: no byte for that long, while waiting for the head or the body.
    return client.with_options(
        max_retries=0, timeout=openai.Timeout(policy.read_timeout_s, connect=policy.connect_timeout_s)
    )


async def open_stream(client: openai.AsyncOpenAI, body: dict[str, Any], policy: StreamPolicy) -> UpstreamStream:
    """POST /v1/responses with stream=true on a `streaming_client`; returns once the upstream answered 200 with
    headers."""
    attempt = 0
    while True:
        attempt += 1
        try:
            # The body goes as `extra_body`: Parley built it already, and the SDK's per-call transform of the
            # typed parameters costs a quarter of opening a stream.
            fields = {key: value for key, value in body.items() if key != "stream"}
            # The raw response of a streamed call: its body is read as it arrives, by `UpstreamStream`.
            raw = await client.responses.with_raw_response.create(
                stream=True, extra_body=fields, extra_headers=NO_TELEMETRY_HEADERS
            )
            return UpstreamStream(raw.http_response, raw.request_id)
        except openai.APIStatusError as error:
            failure: dict[str, object] = {"status": error.status_code, "upstream_request_id": error.request_id}
            wait = _retry_after_seconds(error.response.headers)
            retry = (
                error.status_code in RETRYABLE_STATUSES
                and attempt < policy.max_attempts
                and (wait is None or wait <= policy.max_retry_wait_s)
            )
            if not retry:
                if body.get("background") and refuses_background(error):
                    raise background_refused(error) from error
                raise map_open_error(error) from error
            delay = wait if wait is not None else 0.5 * 2 ** (attempt - 1)
        except openai.APIConnectionError as error:
            failure = {"error": type(transport_error(error)).__name__}
            if not provably_not_started(error) or attempt >= policy.max_attempts:
                raise map_open_error(error) from error
            delay = 0.25 * 2 ** (attempt - 1)
        logger.warning("upstream.retrying", extra={"attempt": attempt, "delay_s": delay, **failure})
        await asyncio.sleep(delay)


async def resume_stream(client: openai.AsyncOpenAI, response_id: str, *, starting_after: int | None) -> UpstreamStream:
    """GET /v1/responses/{id}?stream=true&starting_after=N on a `streaming_client`: a background response's
    events after sequence number N (all of them without N), then the live ones. Failures as `map_open_error`
    maps them."""
    try:
        raw = await client.responses.with_raw_response.retrieve(
            response_id, stream=True, starting_after=openai.omit if starting_after is None else starting_after
        )
    except openai.OpenAIError as error:
        raise map_open_error(error) from error
    return UpstreamStream(raw.http_response, raw.request_id)


async def cancel_response(client: openai.AsyncOpenAI, response_id: str) -> dict[str, Any] | None:
    """POST /v1/responses/{id}/cancel: a background response stops (and its billing with it). Returns the
    Response as it ended (cancelled, or as it had already finished: a cancel is idempotent) as plain JSON; None
    when it cannot be had."""
    try:
        raw = await client.responses.with_raw_response.cancel(response_id)
        parsed: Any = raw.http_response.json()
    except (openai.OpenAIError, ValueError) as error:
        logger.warning("upstream.cancel_failed", extra={"response_id": response_id, "error": type(error).__name__})
        return None
    return parsed if isinstance(parsed, dict) else None


# What the upstream says when it will not run a background response: an organisation with zero data retention
# stores nothing, and background mode needs `store: true`. Its exact words are not documented, so any 400 that
# names `background` or `store` counts.
_BACKGROUND_PARAMS = frozenset({"background", "store"})


def refuses_background(error: openai.APIStatusError) -> bool:
    if error.status_code != 400:
        return False
    body = error.body if isinstance(error.body, dict) else {}
    message = str(body.get("message") or error.message).lower()
    return body.get("param") in _BACKGROUND_PARAMS or "background" in message


BACKGROUND_REFUSED = "background_refused"


def background_refused(error: openai.APIStatusError) -> UpstreamError:
    body = error.body if isinstance(error.body, dict) else {}
    said = body.get("message") if isinstance(body.get("message"), str) else error.message
    return UpstreamError(
        f"The upstream refuses background responses ({said}). This deployment must set "
        "PARLEY_UPSTREAM_BACKGROUND=false (turns then do not survive a lost upstream connection).",
        code=BACKGROUND_REFUSED,
    )


def map_open_error(error: openai.OpenAIError) -> ParleyError:
    """Failures before the first byte, as the HTTP status the client gets (see the contract)."""
    if isinstance(error, openai.APIConnectionError):
        if timed_out(error):
            return UpstreamTimeout("The upstream model service did not answer in time.")
        return UpstreamError("The upstream model service could not be reached.", code="upstream_unreachable")
    if not isinstance(error, openai.APIStatusError):
        return UpstreamError("The upstream model service failed.")
    status = error.status_code
    body = error.body if isinstance(error.body, dict) else {}
    code = body.get("code") if isinstance(body.get("code"), str) else None
    message = body.get("message") if isinstance(body.get("message"), str) else error.message
    logger.warning("upstream.rejected", extra={"status": status, "code": code, "upstream_request_id": error.request_id})
    if code == "conversation_locked":
        return Conflict(
            "The session's conversation is busy with another request; retry in a few seconds.",
            code="conversation_locked",
        )
    if status == 429:
        retry_after = error.response.headers.get("retry-after")
        return RateLimited(
            "The upstream model service is rate limiting requests; retry later.",
            code=code or "upstream_rate_limited",
            headers={"Retry-After": retry_after} if retry_after else {"Retry-After": "1"},
        )
    if status in (400, 404, 422):
        return InvalidRequest(f"The upstream model service rejected the request: {message}", code=code)
    if status == 504:
        return UpstreamTimeout("The upstream model service timed out.")
    return UpstreamError(f"The upstream model service failed (HTTP {status}).", code=code or "upstream_error")


async def retrieve_response(client: openai.AsyncOpenAI, response_id: str) -> dict[str, Any] | None:
    """GET /v1/responses/{id} as plain JSON; None when it cannot be had (404, network)."""
    try:
        raw = await client.responses.with_raw_response.retrieve(response_id)
        parsed: Any = raw.http_response.json()
    except (openai.OpenAIError, ValueError) as error:
        logger.info("upstream.retrieve_failed", extra={"response_id": response_id, "error": type(error).__name__})
        return None
    return parsed if isinstance(parsed, dict) else None


@dataclass(frozen=True, slots=True)
class CreatedResponse:
    """A non-streamed response as plain JSON, and the upstream's id for the request that made it."""

    response: dict[str, Any]
    request_id: str | None


async def create_response(client: openai.AsyncOpenAI, body: dict[str, Any]) -> CreatedResponse:
    """POST /v1/responses without streaming (a short side call, e.g. a session's title); raises the SDK's errors."""
    raw = await client.responses.with_raw_response.create(**body)
    parsed: Any = raw.http_response.json()
    if not isinstance(parsed, dict):
        raise ValueError("the upstream answered with something other than a Response object")
    return CreatedResponse(parsed, raw.http_response.headers.get("x-request-id"))
