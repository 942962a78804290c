"""SSE frames exactly as the real service writes them: `event: <type>`, one line of compact JSON, a blank line.

Delta frames are the hot path (one per token), so they are stitched from pre-built bytes instead of
serialising a dict per token.
"""

from __future__ import annotations

import orjson

from app.simulator.json_types import JsonObject

_OBFUSCATION_ALPHABET = b"Zq3vH8sLm1TnXc7RbW0yKj5GdPa2Uf9EoVh4NtSiJ6rBkQwYlMeCgD"
_OBFUSCATION_TARGET = 16


def frame(payload: JsonObject) -> bytes:
    """Any event; `payload` carries its `type` and `sequence_number`."""
    event_type: str = payload["type"]
    return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def obfuscation(delta_length: int, sequence_number: int) -> bytes:
    """Padding that evens out frame sizes (the real service's defence against length side channels)."""
    length = max(2, _OBFUSCATION_TARGET - delta_length)
    start = sequence_number % (len(_OBFUSCATION_ALPHABET) - _OBFUSCATION_TARGET)
    return _OBFUSCATION_ALPHABET[start : start + length]


class DeltaFrames:
    """The delta frames of one item: output text, function-call arguments or a reasoning summary's text."""

    __slots__ = ("_head", "_obfuscate")

    def __init__(self, *, event_type: str, item_id: str, output_index: int, index_fields: str, obfuscate: bool) -> None:
        fields = f'"type":"{event_type}","item_id":"{item_id}","output_index":{output_index},{index_fields}'
        self._head = f'event: {event_type}\ndata: {{{fields}"sequence_number":'.encode()
        self._obfuscate = obfuscate

    @classmethod
    def output_text(cls, *, item_id: str, output_index: int, obfuscate: bool) -> DeltaFrames:
        return cls(
            event_type="response.output_text.delta",
            item_id=item_id,
            output_index=output_index,
            index_fields='"content_index":0,"logprobs":[],',
            obfuscate=obfuscate,
        )

    @classmethod
    def function_call_arguments(cls, *, item_id: str, output_index: int, obfuscate: bool) -> DeltaFrames:
        return cls(
            event_type="response.function_call_arguments.delta",
            item_id=item_id,
            output_index=output_index,
            index_fields="",
            obfuscate=obfuscate,
        )

    @classmethod
    def reasoning_summary_text(cls, *, item_id: str, output_index: int, obfuscate: bool) -> DeltaFrames:
        return cls(
            event_type="response.reasoning_summary_text.delta",
            item_id=item_id,
            output_index=output_index,
            index_fields='"summary_index":0,',
            obfuscate=obfuscate,
        )

    def build(self, sequence_number: int, delta: str) -> bytes:
        tail = b"}\n\n"
        if self._obfuscate:
            tail = b',"obfuscation":"' + obfuscation(len(delta), sequence_number) + b'"}\n\n'
        return self._head + str(sequence_number).encode() + b',"delta":' + orjson.dumps(delta) + tail
