"""Faults that `POST /_control/next` queues, one per upcoming `POST /v1/responses`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.simulator.api_errors import SimulatorError


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpErrorFault(_Fault):
    """Answer with an HTTP error before any body."""

    kind: Literal["http_error"]
    status: int = Field(ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    code: str | None = None


class CutFault(_Fault):
    """Send `after_events` events, then drop the connection. A background response carries on to its end (and
    can be streamed again); any other is lost with its connection, as on the real service."""

    kind: Literal["cut"]
    after_events: int = Field(ge=0)


class StallFault(_Fault):
    kind: Literal["stall"]
    after_events: int = Field(ge=0)
    seconds: float = Field(ge=0, le=3600)


class ErrorEventFault(_Fault):
    """The nested `error` event, then `response.failed`."""

    kind: Literal["error_event"]
    after_events: int = Field(ge=0)
    code: str = "server_error"


class IncompleteFault(_Fault):
    kind: Literal["incomplete"]
    after_events: int = Field(ge=0)


class ConversationLockedFault(_Fault):
    kind: Literal["conversation_locked"]


class ReplayFault(_Fault):
    """Send exactly these recorded bytes as a 200 `text/event-stream` body."""

    kind: Literal["replay"]
    sse: str


Fault = Annotated[
    HttpErrorFault | CutFault | StallFault | ErrorEventFault | IncompleteFault | ConversationLockedFault | ReplayFault,
    Field(discriminator="kind"),
]
GenerationFault = CutFault | StallFault | ErrorEventFault | IncompleteFault


class FaultList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    faults: list[Fault]


# (type, message) for the codes tests are likely to ask for; anything else falls back to the status default.
_KNOWN_CODES: dict[str, tuple[str, str]] = {
    "rate_limit_exceeded": (
        "requests",
        "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.",
    ),
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "server_error": (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
    ),
    "overloaded": ("service_unavailable", "The server is overloaded or not ready yet. Please try again later."),
    "invalid_prompt": ("invalid_request_error", "Invalid prompt: your prompt was flagged by the safety system."),
    "context_length_exceeded": (
        "invalid_request_error",
        "Your input exceeds the context window of this model. Please adjust your input and try again.",
    ),
}
_STATUS_DEFAULT_CODE = {429: "rate_limit_exceeded", 500: "server_error", 503: "overloaded"}


def error_details(code: str) -> tuple[str, str]:
    """The `type` and `message` the real service sends with `code`."""
    return _KNOWN_CODES.get(
        code, ("server_error", f"An error occurred while processing your request ({code}). You can retry it.")
    )


def http_error(fault: HttpErrorFault) -> SimulatorError:
    code = fault.code or _STATUS_DEFAULT_CODE.get(fault.status)
    if code is None:
        error_type = "invalid_request_error" if fault.status < 500 else "server_error"
        message = f"Simulated HTTP {fault.status} error."
    else:
        error_type, message = error_details(code)
        if fault.status == 400:
            error_type = "invalid_request_error"
    headers = {}
    if fault.retry_after is not None:
        retry_after = fault.retry_after
        headers["retry-after"] = str(int(retry_after)) if retry_after.is_integer() else str(retry_after)
        headers["retry-after-ms"] = str(int(retry_after * 1000))
    return SimulatorError(fault.status, message, type=error_type, code=code, headers=headers)
