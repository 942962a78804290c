"""The turn runner: each turn runs in a task owned by the application, not by the request.

A browser that disconnects only stops reading the event log; the upstream stream is still read to its end
and the turn is stored and billed. A turn runs upstream as a background response (`PARLEY_UPSTREAM_BACKGROUND`):
when its stream is cut, the runner re-attaches from the last event it relayed, and a turn that ends before its
response did (cancel, shutdown, a stall) cancels the response upstream. Each process holds its turns by a lease
(its heartbeat); a turn whose process died is taken over by a live one, which rebuilds what the turn relayed and
goes on from there (`_take_over`), or, when it cannot, reconciled from the upstream (`_reconcile`). Cancel,
shutdown, takeover and reconciling all end in the same place: one `TurnOutcome`, persisted once, then exactly
one terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
import orjson

from app.db.migrate import schema_missing
from app.errors import InvalidRequest, ParleyError, shutting_down
from app.observability.context import bind_upstream_request_id
from app.observability.metrics import Metrics, upstream_status_of
from app.streaming.event_log import EventLog, EventLogRegistry
from app.streaming.outcome import TurnOutcome
from app.streaming.turn_state import ResponseOutcome, TurnState, rate_limit_headers
from app.upstream.conversations import add_items, settle_unfinished_turn
from app.upstream.event_parser import SSESplitter
from app.upstream.failures import STREAM_READ_ERRORS, timed_out
from app.upstream.response_stream import (
    BACKGROUND_REFUSED,
    StreamPolicy,
    UpstreamStream,
    cancel_response,
    open_stream,
    resume_stream,
    retrieve_response,
    streaming_client,
)

logger = logging.getLogger(__name__)

# How a stream that ended early is counted among upstream errors.
STREAM_FAILURE_CODES = {"stalled": "upstream_timeout", "cut": "upstream_disconnected"}
# A cut stream re-attached this many times in a row without bringing an event is given up.
MAX_BARREN_REATTACHES = 5
# Cancel and the conversation's items after a turn ended early: short calls, never the stream's long timeout.
CONTROL_TIMEOUT_S = 10.0
SETTLE_ATTEMPTS = 3


def next_round_body(first: dict[str, Any], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a turn's later round: the first round's, sending only the tool outputs (the conversation holds
    the rest). A `tool_choice` that forced a call (`required`, or one function) forced it once: later rounds
    send `auto`, or the model could never answer and the turn would loop to its cap."""
    body = {**first, "input": outputs}
    if body.get("tool_choice") not in (None, "auto", "none"):
        body["tool_choice"] = "auto"
    return body


def runs_in_background(body: dict[str, Any]) -> bool:
    """The turn's upstream responses are background ones: they outlive a connection, and can be cancelled."""
    return body.get("background") is True


@dataclass(frozen=True, slots=True)
class PriorTurn:
    """What a turn that goes on after `turn.requires_action` already has: it is added, not redone."""

    text: str
    response_ids: list[str]
    usage: dict[str, int] | None
    cost_usd: str | None
    last_event_id: int


@dataclass(slots=True)
class TurnJob:
    turn_id: str
    session_id: str
    user_id: str
    upstream_body: dict[str, Any]
    created_turn: dict[str, Any]
    stream_url: str
    started_at: float = field(default_factory=time.monotonic)
    prior: PriorTurn | None = None
    # Its owner has a monthly budget: each further upstream round reserves first (`TurnStore.reserve_round`).
    budgeted: bool = False
    # The session's first turn, the session untitled: it gets a title once the turn has ended (`TurnEnded`).
    title_wanted: bool = False


@dataclass(frozen=True, slots=True)
class RoundRefused:
    """Why a turn's next upstream round may not go: the turn ends with this status and error."""

    status: str  # "incomplete" (over budget) or "failed" (the budget could not be checked)
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    output: str
    error: str | None = None


class ToolExecutor(Protocol):
    """The function tools Parley runs itself (`services.server_tools`)."""

    def definitions(self) -> list[dict[str, Any]]: ...
    def has(self, name: str) -> bool: ...
    async def run(self, name: str, arguments: str) -> ToolResult: ...


@dataclass(slots=True)
class OrphanedTurn:
    """A turn left in flight by a process that stopped beating."""

    job: TurnJob
    response_ids: list[str]
    output_text: str
    # The last upstream sequence_number of its newest response that its process stored (heartbeat), if any.
    last_sequence_number: int | None = None
    # Someone asked to cancel it before its process stopped: only then does an upstream `cancelled` mean
    # cancelled (an upstream whose client vanished reports `cancelled` too).
    cancel_requested: bool = False
    # It went on after `turn.requires_action` (the client's tool outputs): reconciled, not taken over.
    continued: bool = False
    # The outputs of Parley's own tools stored for its latest round (`TurnStore.store_tool_outputs`).
    tool_outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Takeover:
    """Where a turn taken over from a dead process goes on: its state rebuilt from what was relayed, the stream
    of its unfinished response re-attached (None when its last round had ended), and its tools' known outputs."""

    state: TurnState
    stream: UpstreamStream | None
    # The stream starts at its response's first event (the log had none of it), not after the last relayed.
    from_start: bool
    tool_outputs: dict[str, dict[str, Any]]
    # The calls whose `turn.tool_call.completed` event is in the log already.
    announced: set[str]


@dataclass(frozen=True, slots=True)
class UpstreamPosition:
    """How far a running turn has relayed its background response: enough to re-attach after
    `sequence_number` (its newest response is the last of `response_ids`)."""

    response_ids: tuple[str, ...]
    sequence_number: int


class TurnEnded(Protocol):
    """Called once a turn's terminal event is in its log (`services.titles`); it must return at once, and not raise."""

    def __call__(self, job: TurnJob, final: dict[str, Any]) -> None: ...


class TurnStore(Protocol):
    """Persistence the runner needs; implemented over the database in `services.turn_store`."""

    async def store_response_ids(self, turn_id: str, response_ids: list[str]) -> None: ...
    async def store_tool_outputs(self, turn_id: str, outputs: list[dict[str, Any]]) -> None: ...
    async def finish(self, job: TurnJob, outcome: TurnOutcome) -> dict[str, Any]: ...
    async def cancel_requests(self, turn_ids: list[str]) -> list[str]: ...
    async def beat(self, runner_id: str, positions: dict[str, UpstreamPosition]) -> None: ...
    async def remove_heartbeat(self, runner_id: str) -> None: ...
    async def claim_orphans(self, runner_id: str, stale_before: dt.datetime) -> list[OrphanedTurn]: ...
    async def replay_spool(self) -> int: ...
    async def reserve_round(
        self, job: TurnJob, body: dict[str, Any], responses: list[ResponseOutcome]
    ) -> RoundRefused | None: ...


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    stream_policy: StreamPolicy
    # The lease on a process's turns (`PARLEY_TURN_LEASE_S`): renewed every quarter of it, presumed lost once
    # its last renewal is three quarters old, looked for every quarter, so a dead process's turns are taken
    # over within the lease of its death while a live one has two renewals to spare.
    lease_s: float = 10.0
    cancel_poll_interval_s: float = 1.0
    recovery_timeout_s: float = 15.0
    max_tool_steps: int = 8

    @property
    def heartbeat_interval_s(self) -> float:
        return self.lease_s / 4

    @property
    def orphan_after_s(self) -> float:
        return self.lease_s * 3 / 4

    @property
    def sweep_interval_s(self) -> float:
        return self.lease_s / 4


class TurnHandle:
    """A running turn as this process sees it: its log, and futures for 'upstream opened' and 'done'."""

    __slots__ = (
        "body",
        "cancel_reason",
        "done",
        "job",
        "log",
        "opened",
        "reading",
        "side_tasks",
        "state",
        "stored_position",
        "task",
        "ttft_unknown",
    )

    def __init__(self, job: TurnJob, log: EventLog) -> None:
        loop = asyncio.get_running_loop()
        self.job = job
        self.log = log
        # The body of the upstream call now running (the turn's first, or a later round's).
        self.body = job.upstream_body
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.cancel_reason: str | None = None  # "cancelled" | "shutdown"
        self.task: asyncio.Task[None] | None = None
        # While the turn reads the upstream stream: the deadline of that read, which `interrupt` moves to now.
        self.reading: asyncio.Timeout | None = None
        # The turn's writes that run beside the relay (its response ids), made when there is one.
        self.side_tasks: set[asyncio.Task[None]] | None = None
        # What the relay has learnt, and the position of its background response the heartbeat stored last.
        self.state: TurnState | None = None
        self.stored_position: UpstreamPosition | None = None
        # Taken over after its first token: the time to it was the dead process's to measure.
        self.ttft_unknown = False
        # Nobody may be waiting on `opened` (the client left); don't let asyncio warn about it.
        self.opened.add_done_callback(_consume_exception)

    async def wait_opened(self) -> None:
        """For the one request that started the turn: returns once the upstream answered, raises its failure.
        If that request is cancelled, `opened` is cancelled with it, and the runner only ever sets `opened`
        after checking `done()`: the turn goes on."""
        await self.opened

    def position(self) -> UpstreamPosition | None:
        """Where its background response's stream would go on from, while one is being relayed."""
        state = self.state
        if state is None or not runs_in_background(self.job.upstream_body) or state.unfinished_response_id is None:
            return None
        number = state.last_sequence_number()
        return None if number is None else UpstreamPosition(tuple(state.response_ids), number)

    def interrupt(self, reason: str) -> None:
        """Cancel or shutdown: the first reason is kept, and a read of the upstream in progress ends now."""
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        if self.reading is not None:
            self.reading.reschedule(asyncio.get_running_loop().time())


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Stalled(Exception):
    pass


class _Cut(Exception):
    pass


class TurnRunner:
    def __init__(
        self,
        *,
        upstream: openai.AsyncOpenAI,
        store: TurnStore,
        logs: EventLogRegistry,
        config: RunnerConfig,
        metrics: Metrics | None = None,
        tools: ToolExecutor | None = None,
        on_turn_ended: TurnEnded | None = None,
    ) -> None:
        self.id = f"runner_{uuid.uuid4().hex}"
        self.upstream = upstream
        self.store = store
        self.logs = logs
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics(process=False)
        self.tools = tools
        self.on_turn_ended = on_turn_ended
        self._streaming = streaming_client(upstream, config.stream_policy)
        self._control = upstream.with_options(
            max_retries=1, timeout=openai.Timeout(CONTROL_TIMEOUT_S, connect=config.stream_policy.connect_timeout_s)
        )
        self._said_background_refused = False
        self.accepting = True
        self._handles: dict[str, TurnHandle] = {}
        self._background: list[asyncio.Task[None]] = []

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        # Nothing here may fail the start: a process whose database is down or not yet migrated still
        # serves /healthz and a 503 /readyz, and its loops pick up once the database is there.
        self._background = [
            asyncio.create_task(
                self._every(self.config.heartbeat_interval_s, self._beat, first=0.0), name="runner-heartbeat"
            ),
            asyncio.create_task(
                self._every(self.config.cancel_poll_interval_s, self._poll_cancels), name="runner-cancels"
            ),
            asyncio.create_task(self._every(self.config.sweep_interval_s, self._sweep, first=0.0), name="runner-sweep"),
        ]

    async def drain(self, grace_s: float) -> None:
        """Stop taking turns; let running ones finish within the grace period, then store the rest as
        interrupted, so every event log gets its terminal event and every reader sees it."""
        self.accepting = False
        running = [h.task for h in self._handles.values() if h.task is not None and not h.task.done()]
        if not running:
            return
        logger.info("runner.draining", extra={"turns": len(running), "grace_s": grace_s})
        _, pending = await asyncio.wait(running, timeout=grace_s) if grace_s > 0 else (set(), set(running))
        for handle in list(self._handles.values()):
            if handle.task in pending:
                handle.interrupt("shutdown")
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    async def shutdown(self, grace_s: float) -> None:
        await self.drain(grace_s)
        for task in self._background:
            task.cancel()
        # Bounded: a database that is down must not hold up the exit.
        await asyncio.wait(self._background, timeout=2.0) if self._background else None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.remove_heartbeat(self.id), timeout=2.0)

    def begin_shutdown(self) -> None:
        """Called from the server's signal handling: refuse new turns at once."""
        self.accepting = False

    async def _every(self, interval: float, action: Any, first: float | None = None) -> None:
        await asyncio.sleep(interval if first is None else first)
        while True:
            try:
                await action()
            except Exception as error:
                # A database not migrated yet is said once at start and answered 503 on every request: repeating
                # it here every few seconds would bury it.
                logger.log(
                    logging.DEBUG if schema_missing(error) else logging.WARNING,
                    "runner.background_failed: %s",
                    type(error).__name__,
                    extra={"action": getattr(action, "__name__", "?")},
                )
            await asyncio.sleep(interval)

    async def _beat(self) -> None:
        """The process is alive; with it, how far each background response has been relayed (only those that
        moved since the last beat): not a write per event, and at most a heartbeat behind."""
        positions: dict[str, UpstreamPosition] = {}
        for turn_id, handle in self._handles.items():
            position = handle.position()
            if position is not None and position != handle.stored_position:
                positions[turn_id] = position
        await self.store.beat(self.id, positions)
        for turn_id, position in positions.items():
            running = self._handles.get(turn_id)
            if running is not None:
                running.stored_position = position

    async def _poll_cancels(self) -> None:
        running = [turn_id for turn_id, h in self._handles.items() if not h.done.done()]
        if running:
            for turn_id in await self.store.cancel_requests(running):
                self.cancel(turn_id)

    async def _sweep(self) -> None:
        self.logs.expire()
        # Final writes spooled while the database was down go in before any orphan is looked at.
        await self.store.replay_spool()
        stale_before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.config.orphan_after_s)
        for orphan in await self.store.claim_orphans(self.id, stale_before):
            if self._can_take_over(orphan):
                try:
                    await self._take_over(orphan)
                    continue
                except Exception:  # claimed by this runner now: it must still end, or it would stay in flight
                    logger.exception("runner.takeover_failed", extra={"turn_id": orphan.job.turn_id})
            await self._reconcile(orphan)

    # --- turns ------------------------------------------------------------------------------------

    def handle(self, turn_id: str) -> TurnHandle | None:
        return self._handles.get(turn_id)

    def spawn(self, job: TurnJob) -> TurnHandle:
        if not self.accepting:
            raise shutting_down()
        log = self.logs.create(job.turn_id)
        log.append("turn.created", orjson.dumps({"turn": job.created_turn}))
        handle = TurnHandle(job, log)
        self._handles[job.turn_id] = handle
        handle.task = asyncio.create_task(self._run(handle), name=f"turn-{job.turn_id}")
        return handle

    def continue_turn(self, job: TurnJob) -> TurnHandle:
        """Run the next steps of a turn that waited for the client's tool outputs; its events follow the
        ones already sent, ids continuing."""
        if not self.accepting:
            raise shutting_down()
        assert job.prior is not None
        log = self.logs.get(job.turn_id)
        if log is not None and len(log) == job.prior.last_event_id:
            log.reopen()
        else:
            log = self.logs.create(job.turn_id, base=job.prior.last_event_id)
        handle = TurnHandle(job, log)
        self._handles[job.turn_id] = handle
        handle.task = asyncio.create_task(self._run(handle), name=f"turn-{job.turn_id}")
        return handle

    def cancel(self, turn_id: str) -> bool:
        handle = self._handles.get(turn_id)
        if handle is None or handle.done.done():
            return False
        handle.interrupt("cancelled")
        return True

    async def _run(self, handle: TurnHandle, takeover: Takeover | None = None) -> None:
        job = handle.job
        state = TurnState(started_at=job.started_at) if takeover is None else takeover.state
        handle.state = state
        if job.prior is not None:
            state.text_parts.append(job.prior.text)
            state.response_ids.extend(job.prior.response_ids)
            # The outputs this step sends (the client's, and Parley's tools' from the same round) open its items.
            state.items.extend(
                {"type": "function_call_output", "call_id": item.get("call_id"), "output": item.get("output")}
                for item in job.upstream_body.get("input") or ()
                if isinstance(item, dict) and item.get("type") == "function_call_output"
            )
        body = job.upstream_body
        steps = 0
        if takeover is not None and len(state.response_ids) > 1:
            # Taken over in a later round: what that round sent, for settling the conversation if it fails.
            steps = len(state.response_ids) - 1
            body = next_round_body(job.upstream_body, list(takeover.tool_outputs.values()))
        try:
            while True:
                handle.body = body
                known: dict[str, dict[str, Any]] = {}
                announced: set[str] = set()
                if takeover is not None:
                    failure = await self._resume(handle, state, takeover)
                    known, announced, takeover = takeover.tool_outputs, takeover.announced, None
                else:
                    stream = await self._open(handle, state, body)
                    if stream is None:
                        return
                    failure = await self._relay(handle, stream, state)
                calls = (
                    state.function_calls() if failure is None and state.terminal_event == "response.completed" else []
                )
                if calls and handle.cancel_reason is None:
                    outputs, for_client = await self._run_tools(handle, calls, known=known, announced=announced)
                    if handle.cancel_reason is not None:
                        await self._finish(handle, state, await self._decide(handle, state, handle.cancel_reason))
                        return
                    if for_client:
                        outcome = self._outcome(state, "requires_action")
                        outcome.required_action = {"type": "submit_tool_outputs", "tool_calls": for_client}
                        outcome.pending_tool_outputs = outputs
                        await self._finish(handle, state, outcome)
                        return
                    steps += 1
                    if steps < self.config.max_tool_steps:
                        # With a conversation, the next step sends only the new function_call_output items.
                        body = next_round_body(job.upstream_body, outputs)
                        # The rounds of this run so far are not settled yet: the reservation counts them too.
                        unsettled = [state.outcomes[r] for r in state.response_ids if r in state.outcomes]
                        refused = await self.store.reserve_round(job, body, unsettled)
                        if refused is None:
                            continue
                        await self._close_calls(job, outputs)
                        outcome = self._outcome(state, refused.status)
                        outcome.error = {"code": refused.code, "message": refused.message}
                        await self._finish(handle, state, outcome)
                        return
                    outcome = self._outcome(state, "incomplete")
                    outcome.error = {"code": "tool_loop_limit", "message": "The model kept calling tools; stopped."}
                    await self._finish(handle, state, outcome)
                    return
                outcome = await self._decide(handle, state, failure)
                # A cut is counted where it happens (`_relay`), once for each, re-attached or not.
                if failure == "stalled" or (failure is None and outcome.status == "failed"):
                    code = STREAM_FAILURE_CODES.get(failure or "") or (outcome.error or {}).get("code")
                    self.metrics.upstream_error(stage="stream", status=200, code=code)
                await self._finish(handle, state, outcome)
                return
        except Exception as error:  # a bug must still end the turn and its stream
            logger.exception("runner.turn_crashed", extra={"turn_id": job.turn_id})
            if not handle.opened.done():
                handle.opened.set_exception(error)
            if not handle.done.done():
                outcome = self._outcome(state, "failed")
                outcome.error = {"code": "internal_error", "message": "Parley failed while running this turn."}
                await self._finish(handle, state, outcome)
        finally:
            self._handles.pop(job.turn_id, None)

    async def _open(self, handle: TurnHandle, state: TurnState, body: dict[str, Any]) -> UpstreamStream | None:
        """Open one round's upstream stream. When the upstream refuses, the turn ends here, stored failed, and
        the request that started it gets the failure (None is returned)."""
        try:
            stream = await open_stream(self._streaming, body, self.config.stream_policy)
        except ParleyError as error:
            self.metrics.upstream_error(stage="open", status=upstream_status_of(error), code=error.code)
            if error.code == BACKGROUND_REFUSED and not self._said_background_refused:
                self._said_background_refused = True
                logger.error("upstream.background_refused: %s", error.message)
            outcome = self._outcome(state, "failed")
            outcome.error = {"code": error.code, "message": error.message, "status": error.status_code}
            # Stored before the client hears of it: a retry right after the 429 finds the session free.
            await self._finish(handle, state, outcome)
            if not handle.opened.done():
                handle.opened.set_exception(error)
            return None
        if not handle.opened.done():
            handle.opened.set_result(None)
        self._begin_stream(state, stream)
        return stream

    def _begin_stream(self, state: TurnState, stream: UpstreamStream) -> None:
        state.begin_stream(stream.request_id, rate_limit_headers(stream.headers))
        self.metrics.rate_limits(state.stream_rate_limits)
        bind_upstream_request_id(stream.request_id)

    @staticmethod
    def _outcome(state: TurnState, status: str) -> TurnOutcome:
        return TurnOutcome(
            status=status,
            output_text=state.text,
            response_ids=list(state.response_ids),
            responses=[state.outcomes[r] for r in state.response_ids if r in state.outcomes],
        )

    async def _close_calls(self, job: TurnJob, outputs: list[dict[str, Any]]) -> None:
        """Put the outputs of tools that ran into the conversation without a round to answer them, so that its
        function calls are not left open (the upstream refuses a conversation's next input until they are)."""
        conversation = job.upstream_body.get("conversation")
        if not isinstance(conversation, str) or not outputs:
            return
        try:
            await add_items(self.upstream, conversation, outputs)
        except Exception as error:  # the turn still ends; the session's next message reports the upstream's refusal
            logger.warning("runner.tool_outputs_not_added: %s", type(error).__name__, extra={"turn_id": job.turn_id})

    async def _run_tools(
        self,
        handle: TurnHandle,
        calls: list[dict[str, str]],
        *,
        known: dict[str, dict[str, Any]],
        announced: set[str],
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Run the calls that are Parley's own tools, announcing each; return their outputs and the calls
        that are the client's to answer. Each output is stored before the next round sends it, so that a process
        taking the turn over never runs a finished call again (`known`: those it found stored; `announced`:
        those whose completion its readers have seen)."""
        # Only the tools this turn offered the model are Parley's to run (a session or prompt may narrow them).
        offered = {tool.get("name") for tool in handle.job.upstream_body.get("tools") or () if isinstance(tool, dict)}
        outputs: dict[str, dict[str, Any]] = {}
        for_client: list[dict[str, str]] = []
        to_run: list[dict[str, str]] = []
        for call in calls:
            if self.tools is None or not self.tools.has(call["name"]) or call["name"] not in offered:
                for_client.append(call)
                continue
            stored = known.get(call["call_id"])
            if stored is None:
                to_run.append(call)
                continue
            outputs[call["call_id"]] = stored
            if handle.state is not None and stored not in handle.state.items:
                handle.state.items.append(stored)
            if call["call_id"] not in announced:
                handle.log.append(
                    "turn.tool_call.completed",
                    orjson.dumps(
                        {
                            "call_id": call["call_id"],
                            "name": call["name"],
                            "output": stored.get("output"),
                            "error": None,
                            "duration_ms": None,
                        }
                    ),
                )
        # The calls of one round run at once (the model asked for them together); each output is stored and
        # announced as it comes, and the next round sends them in the order the model made the calls.
        for call in to_run:
            handle.log.append("turn.tool_call.started", orjson.dumps(call))
        finished: list[dict[str, Any]] = list(outputs.values())
        storing = asyncio.Lock()

        async def run_one(call: dict[str, str], tools: ToolExecutor) -> None:
            started = time.monotonic()
            try:
                result = await tools.run(call["name"], call["arguments"])
            except Exception:
                logger.exception("tool.crashed", extra={"turn_id": handle.job.turn_id, "tool": call["name"]})
                result = ToolResult(output='{"error": "The tool failed."}', error="The tool failed.")
            output = {"type": "function_call_output", "call_id": call["call_id"], "output": result.output}
            async with storing:
                outputs[call["call_id"]] = output
                finished.append(output)
                await self.store.store_tool_outputs(handle.job.turn_id, list(finished))
                handle.log.append(
                    "turn.tool_call.completed",
                    orjson.dumps(
                        {
                            "call_id": call["call_id"],
                            "name": call["name"],
                            "output": result.output,
                            "error": result.error,
                            "duration_ms": int((time.monotonic() - started) * 1000),
                        }
                    ),
                )

        if to_run and self.tools is not None:
            await asyncio.gather(*(run_one(call, self.tools) for call in to_run))
            if handle.state is not None:
                handle.state.items.extend(outputs[call["call_id"]] for call in to_run)
        ordered = [outputs[call["call_id"]] for call in calls if call["call_id"] in outputs]
        return ordered, for_client

    async def _relay(self, handle: TurnHandle, stream: UpstreamStream, state: TurnState) -> str | None:
        """Relay upstream events into the log until the response ends. Returns why it ended early ("cancelled",
        "shutdown", "stalled", "cut") or None when it ended by itself. A background response whose stream is cut
        is re-attached after the last event relayed, so the log goes on with no gap and no repeat. The reads run
        under a deadline that a cancel or a shutdown moves to now (`TurnHandle.interrupt`): asyncio's own way to
        cancel a block of this task, and only that block."""
        current: UpstreamStream | None = stream
        try:
            try:
                if handle.cancel_reason is None:
                    async with asyncio.timeout(None) as reading:
                        handle.reading = reading
                        barren = 0
                        while current is not None:
                            relayed = state.events_relayed
                            try:
                                await self._read(handle, current, state)
                                return None
                            except _Stalled:
                                return "stalled"
                            except _Cut:
                                self.metrics.upstream_error(
                                    stage="stream", status=200, code=STREAM_FAILURE_CODES["cut"]
                                )
                                barren = 0 if state.events_relayed > relayed else barren + 1
                                if barren >= MAX_BARREN_REATTACHES or not self._resumable(handle, state):
                                    return "cut"
                            closing, current = current, None
                            with contextlib.suppress(Exception):
                                await closing.aclose()
                            current = await self._reattach(
                                handle.job.turn_id, state.unfinished_response_id, state.last_sequence_number()
                            )
                        return "cut"
            except TimeoutError:
                if handle.cancel_reason is None:
                    raise
            finally:
                handle.reading = None
            # Interrupted by a cancel or a shutdown, before or while reading.
            if current is not None and runs_in_background(handle.job.upstream_body) and state.round_response_id is None:
                await self._learn_response_id(handle, current, state)
            return handle.cancel_reason
        finally:
            if current is not None:
                with contextlib.suppress(Exception):
                    await current.aclose()

    async def _learn_response_id(self, handle: TurnHandle, stream: UpstreamStream, state: TurnState) -> None:
        """Cancelled or shut down before its background response said its id (the first event): read on until
        it does, briefly, so that the response can be cancelled rather than left running and billed."""
        splitter = SSESplitter()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONTROL_TIMEOUT_S / 5):
                async for chunk in stream.chunks():
                    for name, data in splitter.feed(chunk):
                        handle.log.append(name, data)
                        if state.observe(name, data) is not None:
                            return

    @staticmethod
    def _resumable(handle: TurnHandle, state: TurnState) -> bool:
        return (
            runs_in_background(handle.job.upstream_body)
            and state.unfinished_response_id is not None
            and state.last_sequence_number() is not None
        )

    async def _reattach(self, turn_id: str, response_id: str | None, after: int | None) -> UpstreamStream | None:
        """`GET /v1/responses/{id}?stream=true&starting_after=N` for a response whose stream was cut, N the
        sequence number of the last event relayed (without N, from its first event: a takeover whose log has
        none of it); tried again until `recovery_timeout_s` has passed. None when the upstream refuses it (the
        response is gone) or does not answer in time."""
        if response_id is None:
            return None
        deadline = time.monotonic() + self.config.recovery_timeout_s
        delay = 0.1
        while True:
            try:
                stream = await resume_stream(self._streaming, response_id, starting_after=after)
            except ParleyError as error:
                logger.warning(
                    "upstream.reattach_failed: %s",
                    error.code,
                    extra={"turn_id": turn_id, "response_id": response_id, "starting_after": after},
                )
                if isinstance(error, InvalidRequest) or time.monotonic() + delay > deadline:
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            logger.info(
                "upstream.reattached",
                extra={"turn_id": turn_id, "response_id": response_id, "starting_after": after},
            )
            return stream

    async def _read(self, handle: TurnHandle, stream: UpstreamStream, state: TurnState) -> None:
        """The upstream body, split into events: each appended to the log as it is, then observed."""
        splitter = SSESplitter()
        turn_id = handle.job.turn_id
        try:
            async for chunk in stream.chunks():
                for name, data in splitter.feed(chunk):
                    handle.log.append(name, data)
                    try:
                        new_response = state.observe(name, data)
                    except (ValueError, TypeError, AttributeError):
                        logger.warning("upstream.unparseable_event", extra={"turn_id": turn_id, "event": name})
                        continue
                    if new_response is not None:
                        # Stored now, not at the end, yet without holding up the relay.
                        self._side_task(handle, self.store.store_response_ids(turn_id, list(state.response_ids)))
        except STREAM_READ_ERRORS as error:
            raise (_Stalled() if timed_out(error) else _Cut()) from error
        if state.terminal_event is None and state.error_event is None:
            raise _Cut()

    def _side_task(self, handle: TurnHandle, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        if handle.side_tasks is None:
            handle.side_tasks = set()
        handle.side_tasks.add(task)
        task.add_done_callback(handle.side_tasks.discard)

    async def _decide(self, handle: TurnHandle, state: TurnState, failure: str | None) -> TurnOutcome:
        response_ids = list(state.response_ids)
        outcome = TurnOutcome(status="completed", output_text=state.text, response_ids=response_ids)
        if failure is None:
            last = state.outcomes.get(state.current_response_id or "")
            if state.terminal_event == "response.completed":
                outcome.status = "completed"
            elif state.terminal_event == "response.incomplete":
                outcome.status = "incomplete"
                outcome.error = {
                    "code": (last.incomplete_reason if last else None) or "incomplete",
                    "message": "The upstream response ended incomplete.",
                }
            else:
                outcome.status = "failed"
                upstream_error = (last.error if last else None) or state.error_event or {}
                outcome.error = {
                    "code": upstream_error.get("code") or "upstream_failed",
                    "message": upstream_error.get("message") or "The upstream response failed.",
                }
            if last is not None and last.output_text and len(last.output_text) > len(outcome.output_text):
                outcome.output_text = last.output_text
        else:
            outcome = await self._recover(handle, state, failure)
        outcome.responses = [state.outcomes[r] for r in response_ids if r in state.outcomes] + [
            r for r in outcome.responses if r.response_id not in state.outcomes
        ]
        for response in outcome.responses:
            response.upstream_request_id, response.rate_limits = state.response_meta.get(
                response.response_id, (None, None)
            )
        return outcome

    async def _recover(self, handle: TurnHandle, state: TurnState, failure: str) -> TurnOutcome:
        """The relay ended before the response did. A background response still running upstream is cancelled
        (its billing stops, and its usage comes back with it); a non-background one is gone already (the
        upstream stops it when its client leaves, and never stores it). Then the conversation is made to hold
        what the history will show (`_settle_conversation`)."""
        job = handle.job
        response_ids = list(state.response_ids)
        statuses = {"cancelled": "cancelled", "shutdown": "incomplete", "stalled": "failed", "cut": "failed"}
        errors = {
            "cancelled": None,
            "shutdown": {"code": "interrupted", "message": "Parley shut down before the turn finished."},
            "stalled": {"code": "upstream_timeout", "message": "The upstream stream stalled past the timeout."},
            "cut": {"code": "upstream_disconnected", "message": "The upstream stream ended before the response did."},
        }
        outcome = TurnOutcome(
            status=statuses[failure], output_text=state.text, response_ids=response_ids, error=errors[failure]
        )
        response_id = state.unfinished_response_id
        background = runs_in_background(job.upstream_body)
        if response_id is None and (background or state.round_response_id is not None):
            # Its response finished, or (in the background) none is known that could be cancelled: the
            # conversation is the upstream's to keep.
            return outcome
        response = await cancel_response(self._control, response_id) if response_id and background else None
        recovered = ResponseOutcome.from_response(response) if response is not None else None
        if recovered is not None:
            outcome.responses.append(recovered)
        answer = state.round_text
        if failure == "cut" and recovered is not None and recovered.status in ("completed", "incomplete"):
            # It finished upstream before the cancel reached it: the whole answer is there.
            outcome.status = recovered.status
            answer = recovered.output_text or answer
            outcome.error = (
                None
                if recovered.status == "completed"
                else {
                    "code": recovered.incomplete_reason or "incomplete",
                    "message": "The upstream response ended incomplete.",
                }
            )
        outcome.output_text = state.text_before_round + await self._settle_conversation(
            job.turn_id, handle.body, response, answer
        )
        return outcome

    async def _settle_conversation(
        self, turn_id: str, body: dict[str, Any], response: dict[str, Any] | None, answer: str
    ) -> str:
        """After a round (the upstream call made with `body`) that did not finish by itself, the session's
        conversation must hold what Parley's history shows: the round's input, then its partial answer. Returns
        the answer the conversation holds (the upstream's own, if it kept the response), which is what is stored."""
        conversation = body.get("conversation")
        if not isinstance(conversation, str):
            return answer
        raw_input = body.get("input")
        input_items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else list(raw_input or [])
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                return await settle_unfinished_turn(
                    self._control, conversation, input_items=input_items, response=response, answer=answer
                )
            except Exception as error:  # the turn still ends; the history and the conversation may then differ
                # A response that stopped a moment ago may still hold the conversation.
                if isinstance(error, ParleyError) and error.code == "conversation_locked" and attempt < SETTLE_ATTEMPTS:
                    await asyncio.sleep(0.5 * attempt)
                    continue
                logger.warning("runner.conversation_not_settled: %s", type(error).__name__, extra={"turn_id": turn_id})
        return answer

    async def _finish(self, handle: TurnHandle, state: TurnState, outcome: TurnOutcome) -> None:
        """Persist once, then send the one terminal event (the stored turn) and close the log."""
        if handle.side_tasks:
            await asyncio.gather(*handle.side_tasks, return_exceptions=True)
        outcome.ttft_ms = None if handle.ttft_unknown else state.ttft_ms
        outcome.items = state.items
        outcome.duration_ms = int((time.monotonic() - handle.job.started_at) * 1000)
        outcome.last_event_id = len(handle.log) + 1
        final = await self.store.finish(handle.job, outcome)
        handle.log.append(outcome.terminal_event, orjson.dumps({"turn": final}))
        handle.log.close()
        if not handle.done.done():
            handle.done.set_result(final)
        if self.on_turn_ended is not None:
            self.on_turn_ended(handle.job, final)
        self._record(handle.job, outcome, final, events=state.events_relayed)
        upstream_request_id = next(
            (r.upstream_request_id for r in reversed(outcome.responses) if r.upstream_request_id),
            state.stream_request_id,
        )
        logger.info(
            "turn.finished",
            extra={
                "turn_id": handle.job.turn_id,
                "status": outcome.status,
                "events": len(handle.log),
                "upstream_request_id": upstream_request_id,
            },
        )

    def _record(self, job: TurnJob, outcome: TurnOutcome, final: dict[str, Any], *, events: int) -> None:
        try:
            self.metrics.turn_finished(
                status=outcome.status,
                requested_model=job.upstream_body.get("model"),
                ttft_ms=outcome.ttft_ms,
                duration_ms=outcome.duration_ms,
                events=events,
                responses=[(response.model, response.usage) for response in outcome.responses],
                cost_usd=final.get("cost_usd"),
            )
        except Exception:  # a metric must never cost a turn its ending
            logger.exception("metrics.turn_not_recorded", extra={"turn_id": job.turn_id})

    # --- takeover -----------------------------------------------------------------------------------

    def _can_take_over(self, orphan: OrphanedTurn) -> bool:
        """A turn whose background response is known goes on here; the rest are reconciled (`_reconcile`): one
        with no response id stored yet, a non-background one (gone with its client), one asked to cancel, and
        one that went on after the client's tool outputs (its earlier part's events are not rebuilt)."""
        return (
            self.accepting
            and runs_in_background(orphan.job.upstream_body)
            and bool(orphan.response_ids)
            and not orphan.cancel_requested
            and not orphan.continued
        )

    async def _take_over(self, orphan: OrphanedTurn) -> None:
        """Go on with a turn whose process died. What it relayed is rebuilt from the shared log (every event
        its readers may have seen, so the ids go on from the last); without one (a single process restarted,
        or Redis not answering), from the upstream: its earlier rounds retrieved, its current response streamed
        again from its first event. Its response is then re-attached where the log ends. When the upstream no
        longer has it (the embedded simulator died with the process, or its retention passed), the turn is
        reconciled as before: failed, `interrupted`."""
        job = orphan.job
        stored = await self.logs.stored(job.turn_id)
        state = TurnState(started_at=job.started_at)
        outputs = {item["call_id"]: item for item in orphan.tool_outputs if isinstance(item.get("call_id"), str)}
        announced: set[str] = set()
        frames = stored.frames if stored is not None else []
        for name, data in SSESplitter().feed(b"".join(frames)):
            if name == "turn.tool_call.completed":
                call = orjson.loads(data)
                announced.add(call["call_id"])
                output = {"type": "function_call_output", "call_id": call["call_id"], "output": call["output"]}
                outputs.setdefault(call["call_id"], output)
                state.items.append(output)
            elif not name.startswith("turn."):
                if name == "response.created":
                    state.begin_stream(None, None)
                state.observe(name, data)
        await self._add_earlier_rounds(state, orphan.response_ids[:-1])
        last = orphan.response_ids[-1]
        resume_from: tuple[str, int | None] | None = None
        if state.unfinished_response_id is not None:
            resume_from = (state.unfinished_response_id, state.last_sequence_number())
        elif last not in state.response_ids:
            resume_from = (last, None)
        stream: UpstreamStream | None = None
        if resume_from is not None:
            stream = await self._reattach(job.turn_id, *resume_from)
            if stream is None:
                await self._reconcile(orphan)
                return
        log = self.logs.create(job.turn_id, base=0 if frames or stored is None else stored.last_id)
        if frames:
            log.restore(frames)
        elif len(log) == 0:
            log.append("turn.created", orjson.dumps({"turn": job.created_turn}))
        handle = TurnHandle(job, log)
        handle.opened.set_result(None)
        handle.ttft_unknown = state.first_token_at is not None
        self._handles[job.turn_id] = handle
        takeover = Takeover(
            state=state,
            stream=stream,
            from_start=resume_from is not None and resume_from[1] is None,
            tool_outputs=outputs,
            announced=announced,
        )
        handle.task = asyncio.create_task(self._run(handle, takeover), name=f"turn-{job.turn_id}")
        self.metrics.turn_taken_over()
        logger.info(
            "turn.taken_over",
            extra={
                "turn_id": job.turn_id,
                "events": len(log),
                "response_id": resume_from[0] if resume_from else last,
                "starting_after": resume_from[1] if resume_from else None,
            },
        )

    async def _add_earlier_rounds(self, state: TurnState, response_ids: list[str]) -> None:
        """The turn's finished rounds that the rebuilt state lacks (no shared log), from the upstream: each
        round's outcome (its usage for the ledger) and text."""
        for response_id in response_ids:
            if response_id in state.response_ids:
                continue
            response = await retrieve_response(self._control, response_id)
            state.begin_stream(None, None)
            state.response_ids.append(response_id)
            if response is not None:
                outcome = ResponseOutcome.from_response(response)
                state.outcomes[response_id] = outcome
                state.text_parts.append(outcome.output_text or "")
                state.terminal_event = "response.completed"

    async def _resume(self, handle: TurnHandle, state: TurnState, takeover: Takeover) -> str | None:
        """A taken-over turn's first round: relay the re-attached stream to the end, as `_run` does an opened
        one; None at once when the last round had ended before the process died."""
        stream = takeover.stream
        if stream is None:
            return None
        if takeover.from_start:
            self._begin_stream(state, stream)
        else:
            state.stream_request_id = stream.request_id
            bind_upstream_request_id(stream.request_id)
        return await self._relay(handle, stream, state)

    async def _reconcile(self, orphan: OrphanedTurn) -> None:
        """Finish a turn a dead process left in flight: from the upstream response when there is one."""
        job = orphan.job
        outcome = TurnOutcome(
            status="failed",
            output_text=orphan.output_text,
            response_ids=list(orphan.response_ids),
            error={"code": "interrupted", "message": "The process running this turn stopped."},
        )
        response: dict[str, Any] | None = None
        if orphan.response_ids:
            # Nobody relays its background response any more: it is stopped (an orphan is not taken over yet), and
            # comes back as it ended. A non-background one stopped with its client (and is gone, on OpenAI).
            last = orphan.response_ids[-1]
            background = runs_in_background(job.upstream_body)
            response = await (
                cancel_response(self._control, last) if background else retrieve_response(self.upstream, last)
            )
        recovered = ResponseOutcome.from_response(response) if response is not None else None
        if recovered is not None:
            outcome.responses.append(recovered)
            if recovered.status in ("completed", "incomplete", "failed", "cancelled"):
                outcome.output_text = recovered.output_text or orphan.output_text
        # Settled only when its one round's input is known: the request's (a later round's input was not stored).
        if len(orphan.response_ids) == 1 and (recovered is None or recovered.status not in ("completed", "incomplete")):
            answer = (recovered.output_text if recovered is not None else None) or ""
            settled = await self._settle_conversation(job.turn_id, job.upstream_body, response, answer)
            if settled != answer:
                outcome.output_text = settled
        if recovered is not None and recovered.status in ("completed", "incomplete", "failed"):
            outcome.status = recovered.status
            outcome.error = (
                None
                if recovered.status == "completed"
                else recovered.error
                or {
                    "code": recovered.incomplete_reason or recovered.status,
                    "message": f"The upstream response ended {recovered.status}.",
                }
            )
        elif orphan.cancel_requested:
            # Asked to stop, and it never finished: cancelled, as its own process would have ended it.
            outcome.status, outcome.error = "cancelled", None
        # Otherwise it was cut off by the crash: failed, interrupted, even when the upstream says `cancelled`
        # (what a response whose client vanished reports).
        final = await self.store.finish(job, outcome)
        self._record(job, outcome, final, events=0)
        logger.info("turn.reconciled", extra={"turn_id": job.turn_id, "status": outcome.status})


async def wait_for(future: Awaitable[Any]) -> Any:
    """Await a runner future without letting the waiter's cancellation cancel the turn."""
    return await asyncio.shield(future)
