"""The one alias for wire-format objects: the simulator builds and stores OpenAI's JSON as plain dicts."""

from typing import Any, TypeAlias

JsonObject: TypeAlias = dict[str, Any]
