"""Opening one streamed `responses.create` call and reading its raw bytes.

The SDK's automatic retries are off for this call: a retry after OpenAI accepted the request would
append to the conversation and bill twice. Parley retries only where the upstream provably did not start:
the connection was refused, or a 429/503 came back before any body (honouring Retry-After up to a bound).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
from openai._response import AsyncAPIResponse

from app.errors import Conflict, InvalidRequest, ParleyError, RateLimited, UpstreamError, UpstreamTimeout
from app.upstream.errors import provably_not_started, timed_out, transport_error
from app.upstream.pushed_body import Sink, can_push, push_body

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 503})
# A timer may fire this much before the time it was set for.
_TIMER_SLACK_S = 0.002


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    read_timeout_s: float
    connect_timeout_s: float
    max_attempts: int = 3
    max_retry_wait_s: float = 5.0


class UpstreamStream:
    """An open upstream response: its headers now, its body bytes as they arrive.

    Keeps the HTTP response only, not the SDK's wrapper around it: the wrapper holds the request's options
    (a deep copy of the body, headers), which an open stream would carry for its whole length.

    An unencoded body (every one OpenAI sends) is taken from aiohttp's body stream itself, beneath the SDK's
    transport, and pushed from aiohttp's data callback (`app/upstream/pushed_body.py`): a token then costs
    no read at all, where it cost a read under three async generators (httpx2's `aiter_raw` and
    `BoundAsyncStream`, the transport's `AiohttpResponseStream` with its error mapping), a chunker and two
    context managers, and then one aiohttp read. The errors the runner sees are the same ones: aiohttp's,
    which STREAM_READ_ERRORS holds as they are."""

    __slots__ = (
        "_aiohttp_response",
        "_content",
        "_http_response",
        "_last_read",
        "_read_timeout",
        "_stall_timer",
        "request_id",
    )

    def __init__(self, response: AsyncAPIResponse[Any]) -> None:
        self._http_response = response.http_response
        self.request_id: str | None = response.request_id
        self._aiohttp_response = self._find_aiohttp_response()
        self._content = self._plain_body()
        self._read_timeout: float | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0

    @property
    def headers(self) -> Mapping[str, str]:
        return self._http_response.headers

    async def deliver(self, sink: Sink) -> None:
        """Hand the body's bytes to `sink` as they arrive, until the body ends; raises the read's failure (a
        stall past the read timeout, the connection lost) or what `sink` raised. An unencoded body is pushed
        from aiohttp's data callback (`push_body`); `sink` must not block."""
        content = self._content
        if content is not None and can_push(content):
            loop = asyncio.get_running_loop()
            time = loop.time
            self._take_over_stall_timer(loop)

            def received(chunk: bytes) -> None:
                self._last_read = time()
                sink(chunk)

            try:
                await push_body(content, received)
            finally:
                self._stop_stall_timer()
            return
        http_response = self._http_response
        # The transport hands over the bytes as they came off the wire (aiohttp's decompression is off): only
        # an encoded body needs httpx2's decoders.
        if http_response.headers.get("content-encoding", "identity") == "identity":
            chunks = http_response.aiter_raw()
        else:
            chunks = http_response.aiter_bytes()
        async for chunk in chunks:
            sink(chunk)

    async def aclose(self) -> None:
        self._stop_stall_timer()
        # Through httpx2 on either path: it ends in aiohttp's `release()`, which puts a connection back in the
        # pool only when its body was read to the end, and closes it otherwise.
        await self._http_response.aclose()

    def _plain_body(self) -> aiohttp.StreamReader | None:
        """aiohttp's body stream beneath an unencoded response, or None (an encoded body, or a transport that
        is not the SDK's aiohttp one as this knows it: then httpx2 reads the body, as it always can)."""
        if self._http_response.headers.get("content-encoding", "identity") != "identity":
            return None
        aiohttp_response = self._aiohttp_response
        content = aiohttp_response.content if aiohttp_response is not None else None
        return content if isinstance(content, aiohttp.StreamReader) else None

    def _find_aiohttp_response(self) -> aiohttp.ClientResponse | None:
        # httpx2 wraps the transport's stream (`BoundAsyncStream._stream`); the SDK's aiohttp transport keeps
        # its `ClientResponse` in `_aiohttp_response`.
        stream: object = self._http_response.stream
        for _ in range(3):
            aiohttp_response = getattr(stream, "_aiohttp_response", None)
            if isinstance(aiohttp_response, aiohttp.ClientResponse):
                return aiohttp_response
            stream = getattr(stream, "_stream", None)
        return None

    def _take_over_stall_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        """The stall bound (the policy's read timeout, aiohttp's `sock_read`) kept by one timer of this
        stream's, moved on lazily, instead of aiohttp's, which it cancels and sets again at every socket
        read: a paced stream reads once per token. Left to aiohttp when its connection does not say what
        its read timeout is."""
        aiohttp_response = self._aiohttp_response
        connection = aiohttp_response.connection if aiohttp_response is not None else None
        protocol = connection.protocol if connection is not None else None
        timeout = getattr(protocol, "read_timeout", None)
        if protocol is None or not isinstance(timeout, int | float) or timeout <= 0:
            return
        protocol.read_timeout = None  # its timer, set at the last socket read, goes at the next one
        self._read_timeout = timeout
        self._last_read = loop.time()
        self._stall_timer = loop.call_at(self._last_read + timeout, self._check_stall)

    def _check_stall(self) -> None:
        assert self._read_timeout is not None
        assert self._content is not None
        loop = asyncio.get_running_loop()
        due = self._last_read + self._read_timeout
        if loop.time() < due - _TIMER_SLACK_S:
            self._stall_timer = loop.call_at(due, self._check_stall)
            return
        self._stall_timer = None
        # What aiohttp's own timer raises into the read, so `timed_out` and the runner see a stall as before.
        self._content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))

    def _stop_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                return None
    return None


# Built once per client and policy, not per stream; a client's entry goes with it.
_STREAMING_CLIENTS: weakref.WeakKeyDictionary[openai.AsyncOpenAI, dict[StreamPolicy, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def _streaming_client(client: openai.AsyncOpenAI, policy: StreamPolicy) -> openai.AsyncOpenAI:
    """`client` without retries and with the stream's timeouts, sharing its connection pool."""
    by_policy = _STREAMING_CLIENTS.get(client)
    if by_policy is None:
        by_policy = _STREAMING_CLIENTS[client] = {}
    streaming = by_policy.get(policy)
    if streaming is None:
        # The read timeout is the stall bound: aiohttp's until the headers, then the stream's own timer.
        streaming = by_policy[policy] = client.with_options(
            max_retries=0,
            timeout=openai.Timeout(policy.read_timeout_s, connect=policy.connect_timeout_s),
        )
    return streaming


async def open_stream(client: openai.AsyncOpenAI, body: dict[str, Any], policy: StreamPolicy) -> UpstreamStream:
    """POST /v1/responses with stream=true; returns once the upstream answered 200 with headers."""
    streaming_client = _streaming_client(client, policy)
    attempt = 0
    while True:
        attempt += 1
        try:
            # The body goes as `extra_body`: Parley built it already, and the SDK's per-call transform of the
            # typed parameters costs a quarter of opening a stream.
            fields = {key: value for key, value in body.items() if key != "stream"}
            response = await streaming_client.responses.with_streaming_response.create(
                stream=True, extra_body=fields
            ).__aenter__()
            return UpstreamStream(response)
        except openai.APIStatusError as error:
            failure: dict[str, object] = {"status": error.status_code, "upstream_request_id": error.request_id}
            wait = _retry_after_seconds(error.response.headers)
            retry = (
                error.status_code in RETRYABLE_STATUSES
                and attempt < policy.max_attempts
                and (wait is None or wait <= policy.max_retry_wait_s)
            )
            if not retry:
                raise map_open_error(error) from error
            delay = wait if wait is not None else 0.5 * 2 ** (attempt - 1)
        except openai.APIConnectionError as error:
            failure = {"error": type(transport_error(error)).__name__}
            if not provably_not_started(error) or attempt >= policy.max_attempts:
                raise map_open_error(error) from error
            delay = 0.25 * 2 ** (attempt - 1)
        logger.warning("upstream.retrying", extra={"attempt": attempt, "delay_s": delay, **failure})
        await asyncio.sleep(delay)


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
