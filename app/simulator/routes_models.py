"""`GET /v1/models`: a small static list, with each model's dated snapshot."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.simulator.api_errors import SimulatorError
from app.simulator.json_types import json_response
from app.simulator.model_catalog import known_models, model_object

router = APIRouter(prefix="/v1/models")


@router.get("")
async def list_models() -> Response:
    return json_response({"object": "list", "data": [model_object(model) for model in known_models()]})


@router.get("/{model_id}")
async def get_model(model_id: str) -> Response:
    if model_id not in known_models():
        raise SimulatorError(
            404, f"The model '{model_id}' does not exist or you do not have access to it.", code="model_not_found"
        )
    return json_response(model_object(model_id))
