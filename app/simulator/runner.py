"""One response's generation: its events in order, paced, with any injected fault, as batches of SSE frames.

The event order is written once, as a plain generator of frames (`Generation._steps`); the async driver
(`Generation.batches`) adds time (pacing, stalls) and faults around it. Whoever consumes the batches decides
where they go: straight to an HTTP stream, or into an `EventLog` for background responses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass

from app.simulator.events import DeltaFrames, frame
from app.simulator.faults import (
    CutFault,
    ErrorEventFault,
    GenerationFault,
    IncompleteFault,
    StallFault,
    error_details,
)
from app.simulator.generation import split_tokens
from app.simulator.ids import new_call_id, new_encrypted_content, new_id
from app.simulator.json_types import JsonObject
from app.simulator.response_object import served_tier

_MAX_BATCH = 256
# Paced tokens are due on a 5 ms grid, so a thousand paced streams share a few hundred event-loop wake-ups
# a second instead of needing one each per token.
_PACING_GRID = 0.005
_EMPTY = b""


@dataclass(frozen=True, slots=True)
class Pacing:
    tokens_per_second: float = 0.0
    first_token_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class PlannedReasoning:
    tokens: int
    summary: list[str] | None = None
    """The summary's tokens, when the request asked for one; they count as reasoning, not as output text."""
    encrypted: bool = False
    """Whether the request's `include` asked for `reasoning.encrypted_content`."""


@dataclass(frozen=True, slots=True)
class PlannedMessage:
    tokens: list[str]


@dataclass(frozen=True, slots=True)
class PlannedFunctionCall:
    name: str
    arguments: str


PlannedItem = PlannedReasoning | PlannedMessage | PlannedFunctionCall


class _BeforeTerminal:
    """Marks the point just before the terminal event, where faults planned past the end fire."""


_BEFORE_TERMINAL = _BeforeTerminal()
Step = bytes | float | _BeforeTerminal


class Generation:
    def __init__(
        self,
        *,
        response: JsonObject,
        plan: list[PlannedItem],
        pacing: Pacing,
        fault: GenerationFault | None,
        input_tokens: int,
        cached_tokens: int,
        encode: bool,
        obfuscate: bool,
        on_finish: Callable[[str], None],
    ) -> None:
        self.response = response
        self.sequence_number = 0
        self.finished = False
        self.cut_at: int | None = None
        """Set once the stream that asked for a `cut` fault must stop: the number of frames it may send."""
        self._plan = plan
        self._pacing = pacing
        self._fault = fault
        self._input_tokens = input_tokens
        self._cached_tokens = cached_tokens
        self._encode = encode
        self._obfuscate = obfuscate
        self._on_finish = on_finish
        self._requested_tier = str(response["service_tier"])
        self._max_output_tokens: int | None = response["max_output_tokens"]
        self._reasoning_tokens = 0
        self._visible_tokens = 0
        self._paced_tokens = 0
        self._truncated = False
        self._first_token_at = 0.0
        self._open_target: JsonObject | None = None
        self._open_key = ""
        self._open_tokens: list[str] = []
        self._open_count = 0

    # -- driving -------------------------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[list[bytes], None]:
        """The response's frames, in batches that end wherever the generation waits or a fault strikes.

        Unpaced, a whole response comes in a few large batches; paced, every token is its own batch.
        """
        loop = asyncio.get_running_loop()
        self._first_token_at = loop.time() + self._pacing.first_token_delay
        fault = self._fault
        cut = fault if isinstance(fault, CutFault) else None
        stall = fault if isinstance(fault, StallFault) else None
        terminal = fault if isinstance(fault, ErrorEventFault | IncompleteFault) else None
        at_end = False
        shift = 0.0
        batch: list[bytes] = []
        steps = self._steps()
        try:
            while True:
                if stall is not None and (at_end or self.sequence_number >= stall.after_events):
                    if batch:
                        yield batch
                        batch = []
                    await asyncio.sleep(stall.seconds)
                    shift += stall.seconds
                    stall = None
                if cut is not None and (at_end or self.sequence_number >= cut.after_events):
                    self.cut_at = self.sequence_number
                    cut = None
                    if batch:
                        yield batch
                        batch = []
                if terminal is not None and (at_end or self.sequence_number >= terminal.after_events):
                    batch.extend(self._fault_frames(terminal))
                    break
                step = next(steps, None)
                if step is None:
                    break
                if isinstance(step, bytes):
                    batch.append(step)
                    if len(batch) >= _MAX_BATCH:
                        yield batch
                        batch = []
                        await asyncio.sleep(0)
                elif isinstance(step, float):
                    if batch:
                        yield batch
                        batch = []
                    due = math.ceil((step + shift) / _PACING_GRID) * _PACING_GRID
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    at_end = True
            if batch:
                yield batch
        finally:
            steps.close()

    def abandon(self) -> None:
        """Generation stopped before its end (client gone, or cancelled): the response ends as `cancelled`.

        Usage counts what was produced up to that point, so a stopped response is still billed for it.
        """
        self._finish("cancelled")

    def snapshot(self) -> JsonObject:
        """The Response as it stands, with any half-streamed text filled in."""
        self._refresh_open()
        return self.response

    # -- the event order -----------------------------------------------------------------------------------

    def _steps(self) -> Generator[Step, None, None]:
        response = self.response
        yield self._lifecycle("response.created")
        if response["background"]:
            yield self._lifecycle("response.queued")
            response["status"] = "in_progress"
        yield self._lifecycle("response.in_progress")
        if self._pacing.first_token_delay > 0:
            yield self._first_token_at
        for planned in self._plan:
            if self._budget() <= 0:
                self._truncated = True
                break
            if isinstance(planned, PlannedReasoning):
                yield from self._reasoning(planned)
            elif isinstance(planned, PlannedMessage):
                yield from self._message(planned)
            else:
                yield from self._function_call(planned)
        yield _BEFORE_TERMINAL
        if self._truncated:
            self._finish("incomplete", incomplete_reason="max_output_tokens")
            yield self._lifecycle("response.incomplete")
        else:
            self._finish("completed")
            yield self._lifecycle("response.completed")

    def _reasoning(self, planned: PlannedReasoning) -> Generator[Step, None, None]:
        item_id = new_id("rs")
        item: JsonObject = {"id": item_id, "type": "reasoning", "summary": []}
        output_index = self._add_output(item)
        yield self._item_event("response.output_item.added", output_index, item)
        tokens = min(planned.tokens, self._budget())
        self._reasoning_tokens += tokens
        if tokens < planned.tokens:
            self._truncated = True
        elif planned.summary:
            yield from self._summary(planned.summary, item_id=item_id, output_index=output_index, item=item)
        if planned.encrypted:
            item["encrypted_content"] = new_encrypted_content()
        yield self._item_event("response.output_item.done", output_index, item)

    def _summary(
        self, tokens: list[str], *, item_id: str, output_index: int, item: JsonObject
    ) -> Generator[Step, None, None]:
        part: JsonObject = {"type": "summary_text", "text": ""}
        yield self._summary_event("response.reasoning_summary_part.added", item_id, output_index, {"part": part})
        item["summary"].append(part)
        yield from self._deltas(
            tokens,
            target=part,
            key="text",
            frames=DeltaFrames.reasoning_summary_text(
                item_id=item_id, output_index=output_index, obfuscate=self._obfuscate
            ),
            counted=False,
        )
        text = part["text"]
        yield self._summary_event("response.reasoning_summary_text.done", item_id, output_index, {"text": text})
        yield self._summary_event("response.reasoning_summary_part.done", item_id, output_index, {"part": part})

    def _message(self, planned: PlannedMessage) -> Generator[Step, None, None]:
        item_id = new_id("msg")
        item: JsonObject = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        output_index = self._add_output(item)
        yield self._item_event("response.output_item.added", output_index, item)
        part: JsonObject = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        yield self._part_event("response.content_part.added", item_id, output_index, part)
        item["content"].append(part)
        yield from self._deltas(
            planned.tokens,
            target=part,
            key="text",
            frames=DeltaFrames.output_text(item_id=item_id, output_index=output_index, obfuscate=self._obfuscate),
        )
        yield self._event(
            {
                "type": "response.output_text.done",
                "item_id": item_id,
                "output_index": output_index,
                "content_index": 0,
                "text": part["text"],
                "logprobs": [],
            }
        )
        yield self._part_event("response.content_part.done", item_id, output_index, part)
        item["status"] = "incomplete" if self._truncated else "completed"
        yield self._item_event("response.output_item.done", output_index, item)

    def _function_call(self, planned: PlannedFunctionCall) -> Generator[Step, None, None]:
        item_id = new_id("fc")
        item: JsonObject = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": new_call_id(),
            "name": planned.name,
        }
        output_index = self._add_output(item)
        yield self._item_event("response.output_item.added", output_index, item)
        yield from self._deltas(
            split_tokens(planned.arguments),
            target=item,
            key="arguments",
            frames=DeltaFrames.function_call_arguments(
                item_id=item_id, output_index=output_index, obfuscate=self._obfuscate
            ),
        )
        # Like the real service (and unlike the SDK's type in older releases), the done event has no `name`.
        yield self._event(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item_id,
                "output_index": output_index,
                "arguments": item["arguments"],
            }
        )
        item["status"] = "incomplete" if self._truncated else "completed"
        yield self._item_event("response.output_item.done", output_index, item)

    def _deltas(
        self, tokens: list[str], *, target: JsonObject, key: str, frames: DeltaFrames, counted: bool = True
    ) -> Generator[Step, None, None]:
        """Stream `tokens` into `target[key]`, paced; `counted` ones are output tokens (usage, the budget)."""
        allowed = min(len(tokens), self._budget()) if counted else len(tokens)
        self._open_target, self._open_key, self._open_tokens, self._open_count = target, key, tokens, 0
        rate = self._pacing.tokens_per_second
        for index in range(allowed):
            if rate > 0:
                yield self._first_token_at + self._paced_tokens / rate
            self._paced_tokens += 1
            if counted:
                self._visible_tokens += 1
            self._open_count = index + 1
            if self._encode:
                yield frames.build(self._next_sequence_number(), tokens[index])
            else:
                self.sequence_number += 1
                yield _EMPTY
        self._refresh_open()
        self._open_target = None
        if allowed < len(tokens):
            self._truncated = True

    # -- the end -------------------------------------------------------------------------------------------

    def _fault_frames(self, fault: ErrorEventFault | IncompleteFault) -> list[bytes]:
        if isinstance(fault, IncompleteFault):
            self._finish("incomplete", incomplete_reason="max_output_tokens")
            return [self._lifecycle("response.incomplete")]
        error_type, message = error_details(fault.code)
        error_frame = self._event(
            {"type": "error", "error": {"type": error_type, "code": fault.code, "message": message, "param": None}}
        )
        self._finish("failed", error={"code": fault.code, "message": message})
        return [error_frame, self._lifecycle("response.failed")]

    def _finish(self, status: str, *, error: JsonObject | None = None, incomplete_reason: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self._refresh_open()
        self._open_target = None
        response = self.response
        for item in response["output"]:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        response["status"] = status
        response["completed_at"] = int(time.time()) if status == "completed" else None
        response["error"] = error
        response["incomplete_details"] = {"reason": incomplete_reason} if incomplete_reason else None
        response["usage"] = None if status == "failed" else self._usage()
        response["service_tier"] = served_tier(self._requested_tier)
        self._on_finish(status)

    def _usage(self) -> JsonObject:
        output_tokens = self._reasoning_tokens + self._visible_tokens
        return {
            "input_tokens": self._input_tokens,
            "input_tokens_details": {"cached_tokens": self._cached_tokens, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens},
            "total_tokens": self._input_tokens + output_tokens,
        }

    # -- helpers -------------------------------------------------------------------------------------------

    def _budget(self) -> int:
        if self._max_output_tokens is None:
            return 1 << 30
        return self._max_output_tokens - self._reasoning_tokens - self._visible_tokens

    def _add_output(self, item: JsonObject) -> int:
        output: list[JsonObject] = self.response["output"]
        output.append(item)
        return len(output) - 1

    def _refresh_open(self) -> None:
        if self._open_target is not None:
            self._open_target[self._open_key] = "".join(self._open_tokens[: self._open_count])

    def _next_sequence_number(self) -> int:
        number = self.sequence_number
        self.sequence_number += 1
        return number

    def _event(self, payload: JsonObject) -> bytes:
        payload["sequence_number"] = self._next_sequence_number()
        return frame(payload) if self._encode else _EMPTY

    def _lifecycle(self, event_type: str) -> bytes:
        return self._event({"type": event_type, "response": self.response})

    def _item_event(self, event_type: str, output_index: int, item: JsonObject) -> bytes:
        return self._event({"type": event_type, "output_index": output_index, "item": item})

    def _summary_event(self, event_type: str, item_id: str, output_index: int, fields: JsonObject) -> bytes:
        return self._event(
            {"type": event_type, "item_id": item_id, "output_index": output_index, "summary_index": 0, **fields}
        )

    def _part_event(self, event_type: str, item_id: str, output_index: int, part: JsonObject) -> bytes:
        return self._event(
            {"type": event_type, "item_id": item_id, "output_index": output_index, "content_index": 0, "part": part}
        )
