"""The Responses API: create (streamed or not, background or not), retrieve (also as a resumable stream),
cancel and delete.

As on the real service, a background response runs on its own, whoever listens, and its events can be streamed
again from any sequence number for `SimulatorState.background_retention_s` (about ten minutes) after it ended;
a non-background response is known only once it has finished (while it runs, and after its client left, its id
answers 404).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.simulator.api_errors import (
    SimulatorError,
    background_refused,
    conversation_locked,
    invalid_type,
    response_not_found,
)
from app.simulator.attachments import check_attachments
from app.simulator.create_params import parse_create_params
from app.simulator.deps import StateDep
from app.simulator.faults import (
    ConversationLockedFault,
    CutFault,
    HttpErrorFault,
    ReplayFault,
    error_details,
    http_error,
)
from app.simulator.json_types import json_response
from app.simulator.planning import start_response
from app.simulator.runner import Generation
from app.simulator.state import EventLog, ResponseRecord, SimulatorState
from app.simulator.streaming import (
    SSE_CONTENT_TYPE,
    DroppedResponse,
    GenerationStream,
    LogStream,
    pump_into_log,
)
from app.simulator.validation import parse_json_object

router = APIRouter(prefix="/v1/responses")

_HTTP_STATUS_FOR_FAILURE = {"rate_limit_exceeded": 429, "insufficient_quota": 429}


@router.post("")
async def create_response(request: Request, state: StateDep) -> Response:
    fault = state.next_fault()
    if isinstance(fault, HttpErrorFault):
        raise http_error(fault)
    if isinstance(fault, ConversationLockedFault):
        raise conversation_locked()
    if isinstance(fault, ReplayFault):
        return Response(fault.sse.encode(), media_type=SSE_CONTENT_TYPE.decode())
    params = parse_create_params(parse_json_object(await request.body()))
    if params.background and state.zero_data_retention:
        raise background_refused()
    await state.recall(conversation_id=params.conversation_id, response_id=params.previous_response_id)
    await check_attachments(state, params.input_items)
    record, generation = start_response(state, params, fault)
    if params.background:
        record.log = EventLog()
        record.task = state.spawn(_run_in_background(state, record, generation, record.log))
        if params.stream:
            return LogStream(record.log, start=0, cut_by=generation)
        if isinstance(fault, CutFault):
            return DroppedResponse()
        return json_response(generation.snapshot())
    if params.stream:
        return GenerationStream(generation)
    return await _run_to_end(generation)


async def _run_in_background(
    state: SimulatorState, record: ResponseRecord, generation: Generation, log: EventLog
) -> None:
    try:
        await pump_into_log(generation.batches(), log)
    finally:
        state.retain_events(record)


async def _run_to_end(generation: Generation) -> Response:
    """A non-streamed call: the whole generation, then the final Response (or the error it failed with)."""
    batches = generation.batches()
    async for _ in batches:
        if generation.cut_at is not None:
            # The connection is lost, and with it a response that is not in the background.
            await batches.aclose()
            generation.abandon()
            return DroppedResponse()
    response = generation.snapshot()
    if response["status"] == "failed":
        code = response["error"]["code"]
        error_type, message = error_details(code)
        raise SimulatorError(_HTTP_STATUS_FOR_FAILURE.get(code, 500), message, type=error_type, code=code)
    return json_response(response)


@router.get("/{response_id}")
async def get_response(response_id: str, request: Request, state: StateDep) -> Response:
    record = await _record(state, response_id)
    query = request.query_params
    if query.get("stream", "false").lower() != "true":
        return json_response(record.snapshot())
    if record.log is None and record.background:
        # Read back from the state database after a restart: its events were not kept.
        raise SimulatorError(400, "This response's events are no longer available to stream.", param="stream")
    if record.log is None:
        raise SimulatorError(
            400,
            "This response cannot be streamed because it wasn't created with background=true.",
            param="stream",
        )
    raw_after = query.get("starting_after")
    try:
        starting_after = -1 if raw_after is None else int(raw_after)
    except ValueError:
        raise invalid_type("starting_after", "an integer", raw_after) from None
    return LogStream(record.log, start=max(starting_after + 1, 0))


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, state: StateDep) -> Response:
    record = await _record(state, response_id)
    if not record.background:
        raise SimulatorError(400, "Only responses created with background=true can be cancelled.", param=None)
    _stop(record)
    return json_response(record.snapshot())


@router.delete("/{response_id}")
async def delete_response(response_id: str, state: StateDep) -> Response:
    record = await _record(state, response_id)
    _stop(record)
    state.delete_response(record)
    return json_response({"id": record.id, "object": "response", "deleted": True})


def _stop(record: ResponseRecord) -> None:
    """Cancelling is idempotent: a finished response is returned as it ended."""
    generation = record.generation
    if generation is None or generation.finished:
        return
    if record.task is not None:
        record.task.cancel()
    generation.abandon()
    if record.log is not None:
        record.log.close()


async def _record(state: SimulatorState, response_id: str) -> ResponseRecord:
    record = await state.find_response(response_id)
    if record is None or not record.known:
        raise response_not_found(response_id)
    return record
