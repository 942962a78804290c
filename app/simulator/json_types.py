"""Wire-format JSON: the simulator builds and stores OpenAI's objects as plain dicts and writes them with orjson."""

from typing import Any, TypeAlias

import orjson
from starlette.responses import Response

JsonObject: TypeAlias = dict[str, Any]


def json_response(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")
