"""Turning a checked `POST /v1/responses` into a response ready to generate: context, usage, output plan."""

from __future__ import annotations

from collections.abc import Container

import orjson

from app.simulator.api_errors import SimulatorError, conversation_locked, conversation_not_found, missing_parameter
from app.simulator.attachments import acknowledgement
from app.simulator.conversation_items import EMPTY_PREFIX, ConversationItems, ItemsPrefix
from app.simulator.create_params import CreateParams
from app.simulator.faults import GenerationFault
from app.simulator.generation import (
    count_tokens,
    function_arguments,
    reasoning_summary,
    reasoning_tokens,
    reply_tokens,
    split_tokens,
    stable_hash,
    tools_to_call,
)
from app.simulator.items import (
    check_no_duplicate_ids,
    check_tool_outputs_have_calls,
    count_item_tokens,
    newest_user_text,
    output_text,
)
from app.simulator.json_types import JsonObject
from app.simulator.prompts import ResolvedPrompt
from app.simulator.response_object import initial_response
from app.simulator.runner import (
    Generation,
    Pacing,
    PlannedFunctionCall,
    PlannedItem,
    PlannedMessage,
    PlannedReasoning,
)
from app.simulator.state import CachedPrefix, ResponseContext, ResponseRecord, SimulatorState, StoredConversation
from app.simulator.structured_output import json_answer
from app.simulator.titles import title_tokens

SUMMARY_MODES = frozenset({"auto", "concise", "detailed"})


def start_response(
    state: SimulatorState, params: CreateParams, fault: GenerationFault | None
) -> tuple[ResponseRecord, Generation]:
    """Resolve prompt, conversation and history, lock the conversation, and store the response: its record,
    and the generation that produces it. What it builds on must be in memory (`SimulatorState.recall`)."""
    prompt = state.prompts.resolve(params.prompt) if params.prompt is not None else None
    model = params.model or (prompt.model if prompt else None)
    if model is None:
        raise missing_parameter("model")

    conversation: StoredConversation | None = None
    history = EMPTY_PREFIX
    history_tokens = 0
    earlier_call_ids: Container[str] = ()
    cached_prefix: CachedPrefix | None = None
    if params.conversation_id is not None:
        conversation = state.conversations.get(params.conversation_id)
        if conversation is None:
            raise conversation_not_found(params.conversation_id, param="conversation")
        if conversation.locked_by is not None:
            raise conversation_locked()
        check_no_duplicate_ids(conversation.items, params.input_items)
        # What the conversation holds, from its aggregates: no pass over its items.
        history = conversation.items.prefix()
        history_tokens = conversation.items.tokens
        earlier_call_ids = conversation.items.call_ids
        cached_prefix = conversation.cached_prefix
    elif params.previous_response_id is not None:
        previous = state.responses.get(params.previous_response_id)
        if previous is None:
            raise SimulatorError(
                400,
                f"Previous response with id '{params.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        earlier = ConversationItems([*previous.context.items(), *previous.output()])
        history = earlier.prefix()
        history_tokens = earlier.tokens
        earlier_call_ids = earlier.call_ids
        cached_prefix = CachedPrefix(previous.instructions_key, previous.input_tokens)
    check_tool_outputs_have_calls(params.input_items, earlier_call_ids=earlier_call_ids)

    instructions_text, instructions_echo = _instructions(params.instructions, prompt)
    instructions_key = stable_hash(instructions_text)
    prefix_tokens = count_tokens(instructions_text) + history_tokens
    input_tokens = prefix_tokens + count_item_tokens(params.input_items)
    cached_tokens = 0
    if cached_prefix is not None and cached_prefix.instructions_key == instructions_key:
        cached_tokens = min(cached_prefix.tokens, prefix_tokens)

    config = state.config
    reasoning: JsonObject = {**((prompt.reasoning or {}) if prompt else {}), **(params.reasoning or {})}
    response = initial_response(
        params=params, model=model, instructions=instructions_echo, prompt=prompt, reasoning=reasoning
    )
    new_items = [item for item in params.input_items if item.get("type") != "item_reference"]

    def on_finish(status: str) -> None:
        if conversation is not None:
            if conversation.locked_by == response["id"]:
                conversation.locked_by = None
            if status in ("completed", "incomplete"):
                state.append_items(
                    conversation,
                    [*new_items, *response["output"]],
                    cached_prefix=CachedPrefix(instructions_key, input_tokens),
                )
        # The final Response object is complete here (the terminal event only wraps it).
        record.settle()
        if status == "cancelled" and not response["background"]:
            # Only its client leaving stops a non-background response: the real service keeps nothing of it.
            state.forget_response(record)
        else:
            state.response_finished(record)

    generation = Generation(
        response=response,
        plan=_plan(
            params,
            model=model,
            reasoning=reasoning,
            history=history,
            conversation=conversation,
            output_tokens=config.output_tokens,
            attachments=acknowledgement(state.files, params.input_items),
        ),
        pacing=Pacing(config.tokens_per_second, config.first_token_delay_ms / 1000),
        fault=fault,
        input_tokens=input_tokens,
        cached_tokens=cached_tokens,
        encode=params.stream or params.background,
        obfuscate=params.include_obfuscation,
        on_finish=on_finish,
    )
    record = ResponseRecord.for_generation(
        generation,
        context=ResponseContext(
            history, orjson.dumps(params.input_items), conversation.id if conversation is not None else None
        ),
        input_tokens=input_tokens,
        instructions_key=instructions_key,
    )
    if conversation is not None:
        conversation.locked_by = record.id
    if params.store:
        state.responses[record.id] = record
    return record, generation


def _instructions(instructions: str | None, prompt: ResolvedPrompt | None) -> tuple[str, str | list[JsonObject] | None]:
    """The text the model reads, and the `instructions` the Response echoes.

    A stored prompt's instructions come back as developer messages, as the real service returns them.
    """
    if prompt is None:
        return instructions or "", instructions
    texts = [prompt.instructions] + ([instructions] if instructions else [])
    echo: list[JsonObject] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": text}]} for text in texts
    ]
    return "\n".join(texts), echo


def _plan(
    params: CreateParams,
    *,
    model: str,
    reasoning: JsonObject,
    history: ItemsPrefix,
    conversation: StoredConversation | None,
    output_tokens: int | None,
    attachments: str | None = None,
) -> list[PlannedItem]:
    user_text = newest_user_text(params.input_items)
    if user_text is None:
        # A turn of tool outputs only: the question is further back.
        user_text = (
            conversation.items.newest_user_text() if conversation is not None else newest_user_text(history.decoded())
        )
    user_text = user_text or ""
    tool_outputs = [
        output_text(item.get("output")) for item in params.input_items if item.get("type") == "function_call_output"
    ]
    plan: list[PlannedItem] = []
    hidden = reasoning_tokens(model=model, effort=reasoning.get("effort"), seed_text=user_text)
    if hidden:
        # As the real service: summary text only when the request (or its prompt) asks for one.
        summary = None
        if reasoning.get("summary") in SUMMARY_MODES:
            summary = split_tokens(reasoning_summary(user_text=user_text, tool_outputs=tool_outputs))
        plan.append(PlannedReasoning(hidden, summary, encrypted="reasoning.encrypted_content" in params.include))
    title = title_tokens(params.instructions, user_text)
    if title is not None:
        # A title request (Parley's, after a session's first turn): a few of the user's words, not an answer.
        return [*plan, PlannedMessage(title)]
    calls = tools_to_call(
        tools=params.function_tools,
        tool_choice=params.tool_choice,
        user_text=user_text,
        parallel=params.parallel_tool_calls,
        has_tool_outputs=bool(tool_outputs),
    )
    if calls:
        plan.extend(PlannedFunctionCall(tool.name, function_arguments(tool, user_text)) for tool in calls)
    elif params.text_format is not None:
        # A JSON answer is never padded or cut to `output_tokens`: that would break the document.
        plan.append(PlannedMessage(split_tokens(json_answer(params.text_format, user_text))))
    else:
        reply = reply_tokens(user_text=user_text, tool_outputs=tool_outputs, output_tokens=output_tokens)
        if attachments is not None:
            reply = [*split_tokens(attachments + "\n\n"), *reply]
        plan.append(PlannedMessage(reply))
    return plan
