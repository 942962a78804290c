"""Parley's error tree. Each class carries its HTTP status and OpenAI-style type and code.

    ParleyError
     ├── InvalidRequest            400 invalid_request_error
     │    └── ValidationFailed     422 invalid_request_error
     ├── AuthenticationFailed      401 authentication_error
     ├── PaymentRequired           402 budget_error
     ├── PermissionDenied          403 permission_error
     ├── NotFound                  404 not_found_error
     ├── Conflict                  409 conflict_error
     ├── PayloadTooLarge           413 invalid_request_error
     ├── UnsupportedMediaType      415 invalid_request_error
     ├── RateLimited               429 rate_limit_error
     ├── UpstreamError             502 upstream_error
     │    └── UpstreamTimeout      504 upstream_error
     └── ServiceUnavailable        503 service_unavailable

Services raise these; `api/error_handlers.py` renders the one envelope. Nothing here imports FastAPI.
"""

from __future__ import annotations


class ParleyError(Exception):
    status_code: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"type": self.type, "code": self.code, "message": self.message, "param": self.param}}


class InvalidRequest(ParleyError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ValidationFailed(InvalidRequest):
    status_code = 422
    code = "invalid_value"


class AuthenticationFailed(ParleyError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_credentials"

    def __init__(self, message: str = "Missing or invalid credentials.", *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PaymentRequired(ParleyError):
    status_code = 402
    type = "budget_error"
    code = "budget_exceeded"


class PermissionDenied(ParleyError):
    status_code = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ParleyError):
    status_code = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(ParleyError):
    status_code = 409
    type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(ParleyError):
    status_code = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(ParleyError):
    status_code = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(ParleyError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limited"


class UpstreamError(ParleyError):
    status_code = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ServiceUnavailable(ParleyError):
    status_code = 503
    type = "service_unavailable"
    code = "service_unavailable"


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Parley is shutting down; retry shortly.", code="shutting_down", headers={"Retry-After": "2"}
    )
