"""Pieces shared by the routers: list envelopes and documented error responses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Path

from app.api.schemas import ErrorEnvelope, ListResponse

S = TypeVar("S")
R = TypeVar("R")


def list_response(
    items: Sequence[S], has_more: bool, render: Callable[[S], R], id_of: Callable[[R], str]
) -> ListResponse[R]:
    data = [render(item) for item in items]
    return ListResponse[R](
        data=data,
        first_id=id_of(data[0]) if data else None,
        last_id=id_of(data[-1]) if data else None,
        has_more=has_more,
    )


def links(
    **targets: tuple[str, str, dict[str, str]] | tuple[str, str, dict[str, str], dict[str, str]],
) -> dict[str, Any]:
    """OpenAPI links of a success response: the operations that take the ids it returns (a client's next calls,
    and the chains schemathesis's stateful phase follows). A target is (method, path, {parameter: expression}),
    and optionally the request body's fields ({field: expression})."""
    return {
        name: {
            "operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method.lower(),
            "parameters": parameters,
            **({"requestBody": body[0]} if body else {}),
        }
        for name, (method, path, parameters, *body) in targets.items()
    }


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request (e.g. invalid JSON).",
        401: "Missing or invalid credentials.",
        402: "The monthly budget is used up, or does not leave what this may cost (budget_exceeded).",
        403: "The credential may not use this route.",
        404: "No such object for this user.",
        409: "Conflicts with the current state.",
        413: "Request body too large.",
        415: "Request body is not JSON.",
        422: "A field is invalid or unknown.",
        429: "Rate limited; see Retry-After.",
        502: "The upstream model service failed.",
        503: "Parley is shutting down or its database is unavailable (see Retry-After), or the database is not "
        "migrated (database_not_migrated: run `parley migrate`).",
        504: "The upstream model service timed out.",
    }
    return {status: {"model": ErrorEnvelope, "description": descriptions[status]} for status in statuses}


def _id_path(prefix: str) -> Any:
    # Anything not id-shaped is refused before any query runs (NUL bytes, path tricks, 10 kB ids).
    return Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description=f"A `{prefix}_…` id.")


SessionId = Annotated[str, _id_path("sess")]
TurnId = Annotated[str, _id_path("turn")]
MessageId = Annotated[str, _id_path("msg")]
UserId = Annotated[str, _id_path("user")]
KeyId = Annotated[str, _id_path("key")]
FileId = Annotated[str, _id_path("pfile")]
