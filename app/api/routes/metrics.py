"""`GET /metrics`: Prometheus exposition of this process's metrics, open unless PARLEY_METRICS_TOKEN is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.exposition import choose_encoder

from app.api.deps import StateDep
from app.errors import AuthenticationFailed, PermissionDenied

router = APIRouter(tags=["operations"])
metrics_scheme = HTTPBearer(auto_error=False, scheme_name="MetricsToken", description="PARLEY_METRICS_TOKEN")


async def require_metrics_token(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_scheme)],
) -> None:
    token = state.settings.metrics_token
    if token is None:
        return
    if credentials is None:
        raise AuthenticationFailed("Scraping /metrics needs the metrics token.", code="metrics_token_required")
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise PermissionDenied("That is not the metrics token.", code="invalid_metrics_token")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_token)])
def get_metrics(state: StateDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Sync on purpose: FastAPI runs it in a worker thread, so collecting (which reads the spool file and
    /proc) never holds up the event loop. The format follows Accept, as prometheus_client's own app does:
    OpenMetrics when asked for, else the text format."""
    encode, content_type = choose_encoder(accept or "")
    return Response(encode(state.metrics.registry), media_type=content_type)
